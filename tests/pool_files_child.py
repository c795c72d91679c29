"""A process that may open few files, for test_pool_files: `python pool_files_child.py LIMIT DATA
GRAPH REPO` lowers its own RLIMIT_NOFILE to LIMIT first, then, with a scorer in this process on
DATA: one ScorePool of the pool `many`, six at once, and in-process scoring of it (checksums
first, as `xgal score` does), while a thread samples /proc/self/fd; then every descriptor is
taken (ScorePool, and a read of a pool whose arrays are not open yet, must say so), and given
back (the same scorer scores again). Prints what it saw as one line of JSON."""

from __future__ import annotations

import errno
import json
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


class FdWatch:
    """The most descriptors this process held while the `with` lasted, in all and on files
    under `folder`, sampled from /proc/self/fd every millisecond."""

    def __init__(self, folder: str) -> None:
        self.prefix = folder + os.sep
        self.most = self.most_pool = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            names, pool = os.listdir("/proc/self/fd"), 0
            for name in names:
                try:
                    pool += os.readlink(f"/proc/self/fd/{name}").startswith(self.prefix)
                except OSError:  # closed meanwhile
                    pass
            self.most, self.most_pool = max(self.most, len(names)), max(self.most_pool, pool)
            self.samples += 1
            time.sleep(0.001)

    def __enter__(self) -> FdWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def main() -> None:
    limit, data, graph, repo = int(sys.argv[1]), *sys.argv[2:5]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    import grpc

    from xgal.client import ScorerClient
    from xgal.core.acquisition import AcquisitionConfig
    from xgal.core.errors import OutOfFiles
    from xgal.pool.format import Pool
    from xgal.scorer.engines import OnnxRuntimeEngine
    from xgal.scorer.pipeline import score_pool
    from xgal.scorer.server import RunningServer, ServerConfig
    from xgal.v1 import scorer_pb2 as pb
    from xgal.v1 import scorer_pb2_grpc

    out: dict[str, object] = {"limits": open("/proc/self/limits").read()}
    # Scoring gets 8 of the 10 workers: the six requests never meet admission's limit.
    srv = RunningServer(ServerConfig(data_root=data, model_repo=repo, port=0, workers=10))
    with ScorerClient(srv.address) as client:
        client.publish_model(graph, "m")
    channel = grpc.insecure_channel(srv.address)
    stub = scorer_pb2_grpc.ScorerStub(channel)

    def score(pool: str) -> list:
        request = pb.ScorePoolRequest(pool=pool, model=pb.ModelRef(name="m"), top_k=5)
        result = list(stub.ScorePool(request, timeout=120))[-1].result
        return [result.scored, [s.id for s in result.top]]

    with FdWatch(os.path.realpath(os.path.join(data, "many"))) as fds:
        out["alone"] = score("many")
        with ThreadPoolExecutor(6) as ex:
            out["six"] = [f.result() for f in [ex.submit(score, "many") for _ in range(6)]]
        engine = OnnxRuntimeEngine(graph)
        pool = Pool(os.path.join(data, "many"))
        result = score_pool(engine, pool, AcquisitionConfig(), 5, verify=True)
        out["in_process"] = [result.scored, result.top.ids.tolist()]
    out["fds"] = [fds.most, fds.most_pool, fds.samples]

    unread = Pool(os.path.join(data, "fresh"))  # its manifest read; no array opened yet
    taken = []
    try:
        while True:
            taken.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
    try:
        score("small")
    except grpc.RpcError as err:
        out["rpc"] = [err.code().name, err.details()]
    try:
        unread.read(0, 4)
    except OutOfFiles as exc:
        out["read"] = str(exc)
    for fd in taken:
        os.close(fd)
    out["after"] = score("small")
    channel.close()
    srv.stop(grace=0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
