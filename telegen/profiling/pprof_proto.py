"""
pprof's profile.proto (github.com/google/pprof/proto/profile.proto) as real protobuf message
classes, built at import time from a descriptor written here.

Why at run time: there is no protoc on the build machines and no maintained PyPI package ships
the generated module; descriptor_pb2 + message_factory give the same classes protoc would, so
encoding and decoding are the protobuf runtime's, not hand-written wire code. Everything that
reads or writes pprof (the /debug/pprof endpoints, the CPU profiler's files, the tests) uses
these classes.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_T = descriptor_pb2.FieldDescriptorProto
PACKAGE = "perftools.profiles"

# message -> [(field, number, scalar type or message name, repeated)], as in profile.proto.
_MESSAGES = {
    "Profile": [("sample_type", 1, "ValueType", True), ("sample", 2, "Sample", True),
                ("mapping", 3, "Mapping", True), ("location", 4, "Location", True),
                ("function", 5, "Function", True), ("string_table", 6, _T.TYPE_STRING, True),
                ("drop_frames", 7, _T.TYPE_INT64, False), ("keep_frames", 8, _T.TYPE_INT64, False),
                ("time_nanos", 9, _T.TYPE_INT64, False), ("duration_nanos", 10, _T.TYPE_INT64, False),
                ("period_type", 11, "ValueType", False), ("period", 12, _T.TYPE_INT64, False),
                ("comment", 13, _T.TYPE_INT64, True), ("default_sample_type", 14, _T.TYPE_INT64, False)],
    "ValueType": [("type", 1, _T.TYPE_INT64, False), ("unit", 2, _T.TYPE_INT64, False)],
    "Sample": [("location_id", 1, _T.TYPE_UINT64, True), ("value", 2, _T.TYPE_INT64, True),
               ("label", 3, "Label", True)],
    "Label": [("key", 1, _T.TYPE_INT64, False), ("str", 2, _T.TYPE_INT64, False),
              ("num", 3, _T.TYPE_INT64, False), ("num_unit", 4, _T.TYPE_INT64, False)],
    "Mapping": [("id", 1, _T.TYPE_UINT64, False), ("memory_start", 2, _T.TYPE_UINT64, False),
                ("memory_limit", 3, _T.TYPE_UINT64, False), ("file_offset", 4, _T.TYPE_UINT64, False),
                ("filename", 5, _T.TYPE_INT64, False), ("build_id", 6, _T.TYPE_INT64, False),
                ("has_functions", 7, _T.TYPE_BOOL, False), ("has_filenames", 8, _T.TYPE_BOOL, False),
                ("has_line_numbers", 9, _T.TYPE_BOOL, False), ("has_inline_frames", 10, _T.TYPE_BOOL, False)],
    "Location": [("id", 1, _T.TYPE_UINT64, False), ("mapping_id", 2, _T.TYPE_UINT64, False),
                 ("address", 3, _T.TYPE_UINT64, False), ("line", 4, "Line", True),
                 ("is_folded", 5, _T.TYPE_BOOL, False)],
    "Line": [("function_id", 1, _T.TYPE_UINT64, False), ("line", 2, _T.TYPE_INT64, False)],
    "Function": [("id", 1, _T.TYPE_UINT64, False), ("name", 2, _T.TYPE_INT64, False),
                 ("system_name", 3, _T.TYPE_INT64, False), ("filename", 4, _T.TYPE_INT64, False),
                 ("start_line", 5, _T.TYPE_INT64, False)],
}


def _file_descriptor():
    fd = descriptor_pb2.FileDescriptorProto(name="telegen/pprof/profile.proto", package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = fd.message_type.add(name=name)
        for field_name, number, kind, repeated in fields:
            field = message.field.add(name=field_name, number=number,
                                      label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL)
            if isinstance(kind, str):
                field.type = _T.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{kind}"
            else:
                field.type = kind
    return fd


def _classes():
    # A private pool: the default pool is shared with every generated module of the process.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in _MESSAGES}


_CLASSES = _classes()
Profile = _CLASSES["Profile"]
