"""ModelStatistics responses from the server's metrics."""

from __future__ import annotations

from trtserve.protocol import grpc_service_pb2 as pb
from trtserve.server.metrics import Duration, VersionStats


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(versions: list[tuple[str, str, VersionStats]]) -> pb.ModelStatisticsResponse:
    """The ModelStatistics response for each (model, version, statistics)."""
    reply = pb.ModelStatisticsResponse()
    for model, ver, s in versions:
        stats = reply.model_stats.add(
            name=model,
            version=ver,
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
        )
        inf = stats.inference_stats
        inf.success.CopyFrom(_duration(s.success))
        inf.fail.CopyFrom(_duration(s.fail))
        inf.queue.CopyFrom(_duration(s.queue))
        inf.compute_input.CopyFrom(_duration(s.compute_input))
        inf.compute_infer.CopyFrom(_duration(s.compute_infer))
        inf.compute_output.CopyFrom(_duration(s.compute_output))
        for size, b in sorted(s.batches.items()):
            stats.batch_stats.add(
                batch_size=size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
    return reply
