"""The ONNX Runtime engine: explicit session, explicit providers, as ONNX Runtime's API has it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from xgal.core.contract import (
    EMBEDDING,
    LEARNED_ROI_OUTPUTS,
    ROI_PROB,
    SCORE_OUTPUTS,
    VIEW_PROBS,
    NotAScoringGraphError,
    ScoringGraphInfo,
    check_signature,
)
from xgal.core.errors import InvalidArgument
from xgal.scorer.engines.base import BatchScores, Engine, cam_range, no_embedding, no_learned_roi, no_views
from xgal.scorer.engines.providers import (
    CPU,
    PROVIDER_PREFERENCE,
    TENSORRT,
    ProviderSettings,
    device_type,
    provider_options,
    tensorrt_loadable,
)
from xgal.scorer.fixed_batch import fixed_batch_of

log = logging.getLogger(__name__)

# CUDA graphs: regular runs before ONNX Runtime captures (it captures after a few), done at
# load; and one capture at a time in the process.
CAPTURE_RUNS = 3
_CAPTURING = threading.Lock()

# ONNX Runtime's names of the scoring graph's output types.
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def default_providers() -> list[str]:
    """The installed providers, best first; TensorRT only where its libraries load."""
    available = set(ort.get_available_providers())
    return [p for p in PROVIDER_PREFERENCE if p in available and (p != TENSORRT or tensorrt_loadable())]


class ProviderUnavailableError(InvalidArgument):
    """An execution provider asked for is not installed, or cannot run on this machine."""


def check_providers(providers: Sequence[str]) -> None:
    """Raise ProviderUnavailableError, naming what is installed, if any of `providers` is not."""
    available = ort.get_available_providers()
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ProviderUnavailableError(
            f"execution providers {unknown} are not installed; available: {available}"
        )


def session_options(
    intra_op_threads: int,
    spinning: bool = True,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    inter_op_threads: int = 1,
) -> ort.SessionOptions:
    """Options for a CPU-threaded session. With `spinning` (ONNX Runtime's default) the intra-op
    threads spin-wait after each run, which suits one busy session. Sessions that take turns in
    one process must not spin: each one's spinning threads hold the cores while the other runs
    (a 17 ms small-CNN batch took 35 ms when run in turn with a spinning INT8 session, and
    17 ms with spinning off in both)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        optimization: str = "all",
        io_binding: bool | None = None,
        spinning: bool = True,
        settings: ProviderSettings | None = None,
    ) -> None:
        """`model` is a path or the ONNX bytes. Threads 0 = ONNX Runtime's choice (all cores).
        `io_binding` (default: on with a GPU provider) binds inputs and outputs explicitly: the
        pixels are copied into a buffer that stays on the GPU (one per thread, reused while the
        batch shape holds), and only the small outputs come back.
        `settings`: the GPU providers' options (device, TensorRT FP16 and engine cache).
        `spinning=False` stops the session's threads from spin-waiting for the next run; see
        `session_options`."""
        where = "model bytes" if isinstance(model, bytes) else str(model)
        check_providers(providers or ())
        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
        opts = session_options(intra_op_threads, spinning, levels[optimization], inter_op_threads)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The exporter makes `target` an overridable initializer on purpose; ORT warns about
        # that at every session start, which is noise to a user.
        opts.log_severity_level = 3
        if not isinstance(model, bytes) and not os.path.isfile(model):
            raise FileNotFoundError(f"model file not found: {model}")
        self.settings = settings or ProviderSettings()
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else os.fspath(model),
                sess_options=opts,
                providers=provider_options(providers or default_providers(), self.settings, model),
            )
        except Exception as exc:  # ORT raises its own types for bad protobufs and graphs
            raise NotAScoringGraphError(f"{where} is not a loadable ONNX model: {exc}") from None
        self.info = ScoringGraphInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, where)
        inputs = [(i.name, i.type, i.shape) for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        check_signature(inputs, outputs, self.info, where)
        self.providers = self.session.get_providers()
        if providers and self.providers[0] != providers[0]:
            # ONNX Runtime falls back quietly, e.g. to the CPU when CUDA or cuDNN cannot start;
            # a replica asked for a GPU must not serve on the CPU without a word.
            raise ProviderUnavailableError(
                f"asked for {providers[0]} but ONNX Runtime runs the graph on {self.providers[0]}; "
                "is the device (and its libraries) usable here?"
            )
        # `target` is an overridable initializer (ONNX Runtime lists it apart from the inputs).
        self._has_target = any(i.name == "target" for i in self.session.get_overridable_initializers())
        self.has_embedding = EMBEDDING in outputs
        self.has_views = VIEW_PROBS in outputs
        self.has_learned_roi = self.info.has_learned_roi
        self.where = where
        self.device = device_type(self.providers[0])
        self.io_binding = self.providers[0] != CPU if io_binding is None else io_binding
        self._buffers = threading.local()  # each thread's device buffers: engines run concurrently
        # A fixed-batch graph (`xgal model fixed-batch`): short batches are padded, long ones split.
        self.fixed_batch = fixed_batch_of(next(shape for name, _, shape in inputs if name == "image"))
        # On the CPU (tests, a dry run) the same fixed buffers are bound, with nothing captured.
        self.cuda_graph = self.settings.cuda_graph
        if self.cuda_graph:
            if self.fixed_batch is None:
                raise InvalidArgument(
                    f"{where}: CUDA graphs replay fixed shapes; make a fixed-batch graph first "
                    "(xgal model fixed-batch IN OUT --batch N)"
                )
            # ONNX Runtime's CUDA provider keeps a captured graph per calling thread: every run of
            # this engine goes through its one thread, and the capture happens here, at load.
            self._graph_io: dict[str, ort.OrtValue] = {}
            self._graph_thread = ThreadPoolExecutor(1, thread_name_prefix="xgal-cuda-graph")
            self._capture()
        log.info("%s runs on %s", where, ", ".join(self.providers))

    def _capture(self) -> None:
        """Run the fixed batch of zeros `CAPTURE_RUNS` times on the engine's thread, one engine
        at a time in the process (a capture must not meet another session's allocation)."""
        c, h, w = self.info.input_shape
        n = self.fixed_batch or 1
        feed = {
            "image": np.zeros((n, c, h, w), np.dtype(self.info.pixel_dtype)),
            "roi": np.zeros((n, h, w), np.uint8),
        }
        with _CAPTURING:
            for _ in range(CAPTURE_RUNS):
                self._run_once(feed, list(SCORE_OUTPUTS))

    def close(self) -> None:
        if self.cuda_graph:
            self._graph_thread.shutdown(wait=True)

    def _on_device(self, name: str, value: np.ndarray) -> ort.OrtValue:
        """`value` copied into this thread's device buffer for input `name`, made anew only when
        the batch's shape or type changes (the last batch of a pool is usually smaller)."""
        held: dict[str, tuple[tuple, ort.OrtValue]] = self._buffers.__dict__
        kind = (value.shape, value.dtype.str)
        if name not in held or held[name][0] != kind:
            buf = ort.OrtValue.ortvalue_from_shape_and_type(
                value.shape, value.dtype.type, self.device, self.settings.device_id
            )
            held[name] = (kind, buf)
        buf = held[name][1]
        buf.update_inplace(value)
        return buf

    def _run_once(self, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        if self.cuda_graph:
            return self._run_captured(feed, names)
        if not self.io_binding:
            return self.session.run(names, feed)
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_ortvalue_input(name, self._on_device(name, value))
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _run_captured(self, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """One replay of the CUDA graph captured at load (`_capture`): every input and output of
        the graph bound to one device buffer each, for the engine's life (a replay reads and
        writes the same addresses); the pixels are copied in, the outputs out, all on the
        engine's one thread."""
        if self._has_target and "target" not in feed:  # one set of inputs in every replay
            feed = {**feed, "target": np.full(len(feed["image"]), -1, np.int64)}
        return self._graph_thread.submit(self._replay, feed, names).result()

    def _replay(self, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """`_run_captured` on the engine's own thread (the only one that runs its graph)."""
        io = self._graph_io
        if not io:
            for name, value in feed.items():
                io[name] = ort.OrtValue.ortvalue_from_shape_and_type(
                    value.shape, value.dtype.type, self.device, self.settings.device_id
                )
            for o in self.session.get_outputs():
                io[o.name] = ort.OrtValue.ortvalue_from_shape_and_type(
                    o.shape, _NUMPY[o.type], self.device, self.settings.device_id
                )
        binding = self.session.io_binding()
        for name, value in feed.items():
            io[name].update_inplace(value)
            binding.bind_ortvalue_input(name, io[name])
        for o in self.session.get_outputs():
            binding.bind_ortvalue_output(o.name, io[o.name])
        self.session.run_with_iobinding(binding)
        return [np.array(io[name].numpy()) for name in names]  # a copy: the next run reuses them

    @staticmethod
    def plain_session(
        model: str | os.PathLike[str],
        intra_op_threads: int = 0,
        providers: Sequence[str] = (CPU,),
        spinning: bool = True,
    ) -> ort.InferenceSession:
        """A session for any ONNX model (e.g. a forward-only graph to compare against)."""
        opts = session_options(intra_op_threads, spinning)
        return ort.InferenceSession(os.fspath(model), opts, providers=list(providers))

    def run(
        self,
        image: np.ndarray,
        roi: np.ndarray,
        target: np.ndarray | None = None,
        *,
        want_cam: bool = False,
        want_embedding: bool = False,
        want_views: bool = False,
        want_learned: bool = False,
        want_roi_map: bool = False,
    ) -> BatchScores:
        self.check_batch(image, roi, target)
        if (want_learned or want_roi_map) and not self.has_learned_roi:
            raise no_learned_roi(self.where)
        if want_embedding and not self.has_embedding:
            raise no_embedding(self.where)
        if want_views and not self.has_views:
            raise no_views(self.where)
        feed = {"image": np.ascontiguousarray(image), "roi": np.ascontiguousarray(roi)}
        if target is not None:
            feed["target"] = np.ascontiguousarray(target, dtype=np.int64)
        names = [
            *SCORE_OUTPUTS,
            *([EMBEDDING] if want_embedding else []),
            *([VIEW_PROBS] if want_views else []),
            *(LEARNED_ROI_OUTPUTS[1:] if want_learned else []),
            *([ROI_PROB] if want_roi_map else []),
        ]
        n, fixed = len(image), self.fixed_batch
        if fixed is None or n == fixed:
            out = self._run_once(feed, names)
        else:  # each part of `fixed` rows, the last padded with zero images and its rows dropped
            parts = [self._run_once(_padded(feed, lo, fixed), names) for lo in range(0, n, fixed)]
            out = [np.concatenate([p[i] for p in parts])[:n] for i in range(len(names))]
        got = dict(zip(names, out, strict=True))
        return BatchScores(
            probs=got["probs"],
            entropy=got["entropy"],
            dice=got["dice"],
            roi_area=got["roi_area"],
            cam=got["cam"] if want_cam else None,
            cam_range=cam_range(got["cam"]),
            embedding=got.get(EMBEDDING),
            view_probs=got.get(VIEW_PROBS),
            learned_dice=got.get(LEARNED_ROI_OUTPUTS[1]),
            learned_area=got.get(LEARNED_ROI_OUTPUTS[2]),
            roi_prob=got.get(ROI_PROB),
        )


def _padded(feed: dict[str, np.ndarray], lo: int, size: int) -> dict[str, np.ndarray]:
    """Rows [lo, lo + size) of each input, padded to `size` rows with zeros (a target with -1:
    no class asked)."""
    out = {}
    for name, value in feed.items():
        part = value[lo : lo + size]
        if len(part) < size:
            pad = np.zeros((size - len(part), *part.shape[1:]), part.dtype)
            if name == "target":
                pad[:] = -1
            part = np.concatenate([part, pad])
        out[name] = part
    return out
