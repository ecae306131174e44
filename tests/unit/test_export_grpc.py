"""
How GrpcSender reads a failed call: the short secret-free reason, whether the server was
reached, and RetryInfo from the grpc-status-details-bin trailer. A stand-in error object carries
what grpcio's RpcError exposes (code, details, trailing metadata).
"""
import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from telegen.export.grpc_sender import outcome_from_error
from telegen.export.retry import PERMANENT, RETRYABLE


class RpcError:
    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


def retry_info_trailer(seconds, nanos=0):
    status = status_pb2.Status(code=8, message="slow down")
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)))
    return (("grpc-status-details-bin", status.SerializeToString()),)


def test_connection_refused_is_unreached_and_retryable():
    details = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:4317: "
               "Failed to connect to remote host: Connection refused")
    outcome = outcome_from_error(RpcError(grpc.StatusCode.UNAVAILABLE, details))
    assert (outcome.kind, outcome.reached, outcome.error, outcome.error_type, outcome.status) == (
        RETRYABLE, False, "connection refused", "connection_refused", "unreachable")


def test_server_sent_unavailable_is_reached():
    outcome = outcome_from_error(RpcError(grpc.StatusCode.UNAVAILABLE, "collector overloaded"))
    assert (outcome.kind, outcome.reached, outcome.error, outcome.status) == (RETRYABLE, True, "grpc UNAVAILABLE", "UNAVAILABLE")


def test_resource_exhausted_with_retry_info_gives_the_delay():
    outcome = outcome_from_error(RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", retry_info_trailer(2, 500_000_000)))
    assert (outcome.kind, outcome.retry_after) == (RETRYABLE, 2.5)


def test_resource_exhausted_without_retry_info_is_permanent():
    outcome = outcome_from_error(RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota"))
    assert outcome.kind == PERMANENT and outcome.retry_after is None


def test_details_never_leak_into_the_reason():
    outcome = outcome_from_error(RpcError(grpc.StatusCode.UNAUTHENTICATED, "bad token Bearer abc123"))
    assert outcome.error == "grpc UNAUTHENTICATED" and "abc123" not in repr(outcome)
