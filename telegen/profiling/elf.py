"""
The function symbols and build id of an ELF file, read with struct (no pyelftools on these hosts).

Why our own reader: symbolizing needs three things only (PT_LOAD segments to turn a file offset
into a virtual address, FUNC symbols of .symtab or .dynsym, the GNU build id), and the files
must be read once and kept: the process that mapped them may be gone when its samples are
symbolized. 64-bit little-endian ELF (x86_64, aarch64) only; anything else is ElfError.
"""
import bisect
import mmap
import struct

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_NOTE = struct.Struct("<III")
PT_LOAD = 1
SHT_SYMTAB, SHT_DYNSYM, SHT_NOTE = 2, 11, 7
STT_FUNC, STT_GNU_IFUNC = 2, 10
_FUNCTION_TYPES = frozenset((STT_FUNC, STT_GNU_IFUNC))
NT_GNU_BUILD_ID = 3


class ElfError(Exception):
    """The file is not an ELF this reader understands, or is truncated."""


class ElfSymbols:
    """
    Sorted function symbols of one ELF file.

    @ivar build_id: hex of the GNU build id, or "".
    """

    def __init__(self, data):
        _check(data)
        (_, _, _, _, _, phoff, _, _, _, phentsize, phnum, _, _, _) = _EHDR.unpack_from(data)
        try:
            self._segments = [
                (p[2], p[5], p[3]) for p in (_PHDR.unpack_from(data, phoff + i * phentsize) for i in range(phnum))
                if p[0] == PT_LOAD]                               # (p_offset, p_filesz, p_vaddr)
        except struct.error as e:
            raise ElfError(f"truncated ELF: {e}") from e
        sections = section_headers(data)
        self.build_id = _build_id(data, sections)
        symbols = _functions(data, sections, SHT_SYMTAB) or _functions(data, sections, SHT_DYNSYM)
        symbols.sort()
        self._starts = [s[0] for s in symbols]
        self._symbols = symbols
        self._data = data           # names are decoded from the string table only when asked for

    @classmethod
    def from_path(cls, path):
        """Map the file rather than read it: only the headers, symbol and string tables get paged in."""
        return cls(map_file(path))

    def vaddr(self, file_offset):
        """The link-time virtual address of a file offset (inside a PT_LOAD segment), or None."""
        for offset, size, vaddr in self._segments:
            if offset <= file_offset < offset + size:
                return file_offset - offset + vaddr
        return None

    def function(self, vaddr):
        """The name of the function containing vaddr, or None."""
        i = bisect.bisect_right(self._starts, vaddr) - 1
        if i < 0:
            return None
        start, size, name_at = self._symbols[i]
        # A symbol without a size (hand-written assembly, _init/_fini) claims only its first byte:
        # stretching it to the next symbol would name padding and data after it.
        if vaddr >= start + max(size, 1):
            return None
        return _string(self._data, name_at)


def map_file(path):
    """The file mapped read-only (only what is read gets paged in)."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as e:          # an empty file cannot be mapped
            raise ElfError(f"cannot map {path}: {e}") from e


def _check(data):
    if data[:4] != b"\x7fELF" or len(data) < _EHDR.size:
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian ELF is supported")


def section_headers(data):
    """The section header tuples (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, ...)."""
    _check(data)
    shoff, shentsize, shnum = (_EHDR.unpack_from(data)[i] for i in (6, 11, 12))
    try:
        return [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)] if shoff else []
    except struct.error as e:
        raise ElfError(f"truncated ELF: {e}") from e


def section_names(data, sections):
    """The names of the sections (from the section header string table), in header order."""
    shstrndx = _EHDR.unpack_from(data)[13]
    if not sections or shstrndx >= len(sections):
        return []
    base = sections[shstrndx][4]
    return [_string(data, base + sh[0]) for sh in sections]


def find_symbols(data, sections, names):
    """{name: (value, size)} of the .symtab symbols named exactly so ({} without a .symtab)."""
    for sh in sections:
        if sh[1] != SHT_SYMTAB or sh[6] >= len(sections):
            continue
        strtab = sections[sh[6]]
        strings = memoryview(data)[strtab[4]:strtab[4] + strtab[5]]
        wanted = {}
        for name in names:                   # a name's offset in the string table, then the symbol naming it
            at = bytes(strings).find(b"\0" + name.encode() + b"\0")
            if at >= 0:
                wanted[at + 1] = name
        end = min(sh[4] + sh[5], len(data))
        found = {}
        with memoryview(data)[sh[4]:end - (end - sh[4]) % _SYM.size] as table:
            for st_name, _, _, shndx, value, size in _SYM.iter_unpack(table):
                if st_name in wanted and shndx and value:
                    found[wanted[st_name]] = (value, size)
        strings.release()
        return found
    return {}


def _string(data, offset):
    end = data.find(b"\0", offset)
    return data[offset:end if end >= 0 else len(data)].decode("utf-8", "replace")


def _functions(data, sections, kind):
    """[(start, size, offset of the name)] of the FUNC symbols of the first section of type kind."""
    for sh in sections:
        if sh[1] != kind or not sh[9]:
            continue
        strtab = sections[sh[6]] if sh[6] < len(sections) else None
        if strtab is None:
            return []
        str_off = strtab[4]
        end = min(sh[4] + sh[5], len(data))
        with memoryview(data)[sh[4]:end - (end - sh[4]) % _SYM.size] as table:
            return [(value, size, str_off + st_name) for st_name, info, _, shndx, value, size in _SYM.iter_unpack(table)
                    if info & 0xF in _FUNCTION_TYPES and shndx and value]
    return []


def _build_id(data, sections):
    for sh in sections:
        if sh[1] != SHT_NOTE:
            continue
        pos, end = sh[4], sh[4] + sh[5]
        while pos + _NOTE.size <= end:
            namesz, descsz, kind = _NOTE.unpack_from(data, pos)
            name_at = pos + _NOTE.size
            desc_at = name_at + (namesz + 3 & ~3)
            if kind == NT_GNU_BUILD_ID and data[name_at:name_at + namesz] == b"GNU\0":
                return data[desc_at:desc_at + descsz].hex()
            pos = desc_at + (descsz + 3 & ~3)
    return ""
