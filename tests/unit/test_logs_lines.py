"""LineCutter and Multiline: offsets every line ends at, over-long lines, CRLF, unterminated tails."""
from telegen.logs.lines import LineCutter
from telegen.logs.multiline import Multiline


def test_lines_carry_the_offset_past_their_newline_across_feeds():
    cutter = LineCutter(100, 1000)
    assert cutter.feed(b"one\ntw") == [(b"one", 104)]
    assert (cutter.offset, cutter.pending) == (104, b"tw")
    assert cutter.feed(b"o\r\nthree\n") == [(b"two", 109), (b"three", 115)]
    assert cutter.offset == 115 and cutter.pending == b""


def test_unterminated_tail_is_emitted_by_flush():
    cutter = LineCutter(0, 1000)
    assert cutter.feed(b"a\nlast") == [(b"a", 2)]
    assert cutter.flush() == [(b"last", 6)]
    assert cutter.flush() == []


def test_long_lines_are_split_into_pieces_and_counted():
    cutter = LineCutter(0, 4)
    assert cutter.feed(b"abcdefghij\nxy\n") == [(b"abcd", 4), (b"efgh", 8), (b"ij", 11), (b"xy", 14)]
    assert cutter.split == 1
    # a long line still being written: full pieces go at once, the rest waits
    assert cutter.feed(b"0123456") == [(b"0123", 18)]
    assert cutter.feed(b"7\n") == [(b"4567", 23)]


def test_long_lines_are_truncated_and_the_rest_skipped():
    cutter = LineCutter(0, 4, "truncate")
    assert cutter.feed(b"abcdefghij\nxy\n") == [(b"abcd", 11), (b"xy", 14)]
    assert cutter.feed(b"0123456789") == [(b"0123", 24)]
    assert cutter.feed(b"more bytes of it\nnext\n") == [(b"next", 46)]
    assert cutter.truncated == 2


def test_multiline_joins_continuations_to_the_line_that_starts_a_record():
    joiner = Multiline(r"\d{4}-", 1000)
    assert joiner.feed([("2024-01-01 boom", 16), ("Traceback:", 27), ("  at x", 34)]) == []
    assert joiner.holding
    assert joiner.feed([("2024-01-02 ok", 48)]) == [("2024-01-01 boom\nTraceback:\n  at x", 34)]
    assert joiner.flush() == [("2024-01-02 ok", 48)]
    assert not joiner.holding
