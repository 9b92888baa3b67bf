"""The GPU plan of one compiled training step, read on a CPU-only machine.

    python bench/gpu_plan.py [--recipe NAME|FILE ...] [--kernels eager|triton ...]
                             [--set FIELD=VALUE ...] [--json PATH] [--results DIR] [--top N]

For each recipe (default: seed, airbench94-muon, hiverge; a recipe file's path
works too) and kernel variant (default: eager and triton, both compiled; and
`release`, see below), at the
recipe's own batch size and dtype (float16, channels_last), Inductor generates
its CUDA code for every graph of one training step (the compiled forward +
loss, its backward, the compiled optimizer update) for a stand-in H100/H200
(sm_90). Nothing is compiled to PTX and nothing runs on a GPU: every graph is
traced on CPU fake tensors, copied to a fake cuda:0 and handed to Inductor's
inner compile, whose wrapper code and scheduler are read. It reports, per step:

  launches      Triton kernel launches: ours (kernels/*.py) and Inductor's
  extern        extern calls (convolutions, matmuls) by op
  bytes         read + written per scheduler node (kernel or extern call), and in all
  flops         matmul and convolution FLOPs (torch.utils.flop_counter on each graph)
  outside       aten ops that run outside compiled regions in the training loop
                (learning-rate fills, loss/accuracy sums, EMA) and in the loader's epoch,
                with the bytes they read + write and their matmul FLOPs
  predicted     seconds per step and per run on an H100 and an H200, from the model in
                bench/NOTES.md ("The plan's time model")
  heaviest      the kernels moving the most bytes, each named with the network
                operation (module path and aten ops) it comes from

`--kernels release` plans a record's step as its released script compiles it
(RELEASES below: airbench94-muon and hiverge): the recipe's network in plain
PyTorch modules (nn.MaxPool2d, nn.BatchNorm2d; none of our kernels or pool),
compiled where the script compiles it, the rest counted as eager operations, the
network's graphs replayed as CUDA graphs (their mode, max-autotune). Not their
code: their arithmetic and their compile scope, in ours.

A text table goes to stdout; --json writes everything; --results DIR appends
one row per recipe and variant to DIR/plan.csv and the whole plan as one line
of DIR/plans.jsonl (the commit in every row and line).

It leans on private torch internals (named in INTERNALS below). When one has
moved, it stops with one line naming it (exit 2); it never reports zeros.
Run without TRITON_INTERPRET (our kernels must be triton_ops, as on a GPU).
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import importlib
import json
import os
import re
import subprocess
import sys
import types
from collections import Counter, defaultdict
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The cards the model predicts for: copy rate (bytes read + written per second), dense
# half-precision matrix rate (FLOP/s), host cost of one kernel launch not replayed by a
# CUDA graph (s). Measured on this workplace's machines (bench/NOTES.md).
CARDS = {
    "H100": dict(copy_rate=3.0e12, matrix_rate=780e12),
    "H200": dict(copy_rate=4.3e12, matrix_rate=780e12),
}
LAUNCH_OVERHEAD = 5e-6          # seconds per launch without a CUDA graph (NOTES.md)
DEFAULT_RECIPES = ("seed", "airbench94-muon", "hiverge")
VARIANTS = ("eager", "triton")
# How the records' released scripts compile their training step (read from the scripts; both
# with mode "max-autotune", which replays the compiled network as CUDA graphs):
#   "model"         airbench94_muon.py: model.compile(); the loss and its backward run eagerly
#   "forward_loss"  hiverge's cifar10_speedrun.py: model.compile() and the forward + loss +
#                   backward step compiled (the backward is the forward's compiled backward)
# Both run their optimizers outside those graphs (fused SGD; Muon's foreach operations with a
# compiled Newton-Schulz). The plan compiles the update as one graph (as ours) without a CUDA
# graph: as few launches and bytes as their optimizers can have, so a lower bound of theirs.
RELEASES = {"airbench94-muon": "model", "hiverge": "forward_loss"}
RELEASE = "release"
TENSOR_KINDS = ("forward", "backward", "update")
CSV_FIELDS = ("date", "commit", "recipe", "kernels", "batch_size", "dtype", "torch", "triton",
              "launches", "launches_ours", "launches_inductor", "extern_calls", "bytes_gb", "extern_gb",
              "gflop", "outside_ops", "graphs", "predicted_ms_step_h100", "predicted_ms_step_h200",
              "predicted_s_run_h100", "predicted_s_run_h200", "predicted_s_run_cuda_graphs_h100",
              "predicted_s_run_cuda_graphs_h200", "steps_per_run", "outside_gb", "outside_gflop",
              "launches_graphed", "run_gb", "run_launches_not_graphed")


class PlanError(RuntimeError):
    """The plan cannot be read: one line, naming what is missing or came out empty."""


# --------------------------------------------------------------------------- torch internals
def internal(path: str):
    """The object at dotted `path` (attributes from the top package, importing submodules
    as needed), or PlanError naming it."""
    parts = path.split(".")
    missing = PlanError(f"torch internal {path} is missing (torch {torch.__version__}): "
                        f"bench/gpu_plan.py needs updating for this release")
    try:
        obj = importlib.import_module(parts[0])
    except ImportError:
        raise missing from None
    for i, attr in enumerate(parts[1:], 1):
        if not hasattr(obj, attr):
            try:
                importlib.import_module(".".join(parts[:i + 1]))
            except ImportError:
                raise missing from None
            if not hasattr(obj, attr):
                raise missing
        obj = getattr(obj, attr)
    return obj


# Every private name the plan leans on; checked before anything is patched.
INTERNALS = (
    "torch._dynamo.device_interface.CudaInterface",
    "torch._dynamo.device_interface.caching_worker_device_properties",
    "torch._inductor.compile_fx.compile_fx",
    "torch._inductor.compile_fx.compile_fx_inner",
    "torch._inductor.graph.GraphLowering.save_output_code",
    "torch._inductor.graph.GraphLowering.codegen",
    "torch._inductor.scheduler.BaseSchedulerNode.get_read_write_buffers_sizes",
    "torch._inductor.ir.UserDefinedTritonKernel",
    "torch._inductor.async_compile.AsyncCompile.triton",
    "torch._inductor.config.compile_threads",
    "torch._inductor.config.force_disable_caches",
    "torch._inductor.config.max_autotune",
    "torch._inductor.config.coordinate_descent_tuning",
    "torch._inductor.config.triton.cudagraphs",
    "torch._functorch.config.force_non_lazy_backward_lowering",
    "torch._guards.detect_fake_mode",
    "torch._subclasses.fake_tensor.FakeTensorMode",
    "torch.fx.passes.fake_tensor_prop.FakeTensorProp",
    "torch.utils.flop_counter.flop_registry",
    "triton.runtime.driver.set_active",
    "triton.backends.compiler.GPUTarget",
    "kernels._common.interpreting",
)


class StandInDriver:
    """Enough of a Triton driver to compile kernels to Triton IR for an sm_90 card."""

    def __init__(self, target):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cuda", 0)


def stand_in_properties():
    """The properties of an H100-like card (what Inductor's heuristics ask)."""
    return types.SimpleNamespace(
        name="NVIDIA H100 (stand-in)", major=9, minor=0, multi_processor_count=132, warp_size=32,
        regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
        shared_memory_per_multiprocessor=228 * 1024, shared_memory_per_block=48 * 1024,
        shared_memory_per_block_optin=227 * 1024, L2_cache_size=50 * 1024 * 1024,
        total_memory=80 * 1024 ** 3, gcnArchName="", uuid="stand-in", clock_rate=1980000,
        memory_clock_rate=2619000, memory_bus_width=5120, is_integrated=False, is_multi_gpu_board=False,
        max_threads_per_block=1024, pci_bus_id=0, pci_device_id=0, pci_domain_id=0)


def install_stand_in():
    """Patch torch so that Inductor writes CUDA code for one stand-in sm_90 card."""
    for path in INTERNALS:
        internal(path)
    import triton
    from triton.backends.compiler import GPUTarget
    from torch._dynamo import device_interface
    import torch._inductor.config as inductor_config
    import torch._functorch.config as functorch_config
    from torch._inductor.async_compile import AsyncCompile
    import kernels

    props = stand_in_properties()
    cuda_answers = dict(
        device_count=lambda: 1, current_device=lambda: 0,
        get_device_properties=lambda device=None: props,
        get_device_capability=lambda device=None: (9, 0),
        get_device_name=lambda device=None: props.name,
        set_device=lambda device: None, _exchange_device=lambda device: 0,
        _maybe_exchange_device=lambda device: 0, synchronize=lambda device=None: None,
        _lazy_init=lambda: None)
    for name, answer in cuda_answers.items():
        if not hasattr(torch.cuda, name):
            raise PlanError(f"torch internal torch.cuda.{name} is missing (torch {torch.__version__}): "
                            f"bench/gpu_plan.py needs updating for this release")
        setattr(torch.cuda, name, answer)
    interface = device_interface.CudaInterface
    for name, answer in cuda_answers.items():
        if hasattr(interface, name):
            setattr(interface, name, staticmethod(answer))
    interface.is_available = staticmethod(lambda: True)
    interface.Worker.get_device_properties = staticmethod(lambda device=None: props)
    interface.Worker.current_device = staticmethod(lambda: 0)
    interface.Worker.set_device = staticmethod(lambda device: None)
    device_interface.caching_worker_device_properties["cuda"] = props
    triton.runtime.driver.set_active(StandInDriver(GPUTarget("cuda", 90, 32)))

    inductor_config.compile_threads = 1
    inductor_config.max_autotune = False
    inductor_config.max_autotune_pointwise = False
    inductor_config.max_autotune_gemm = False
    inductor_config.coordinate_descent_tuning = False
    inductor_config.triton.autotune_pointwise = False
    inductor_config.triton.cudagraphs = False
    inductor_config.force_disable_caches = True
    functorch_config.force_non_lazy_backward_lowering = True
    # Kernel sources are recorded, never compiled to PTX.
    AsyncCompile.triton = lambda self, kernel_name, source_code, *args, **kwargs: RecordedKernel(kernel_name)
    # Our kernels' input checks accept CPU tensors "under the interpreter": on a fake cuda
    # tensor nothing runs, but they are traced on CPU fake tensors first.
    kernels._common.interpreting = lambda: True


class RecordedKernel:
    """What AsyncCompile.triton hands back instead of a compiled kernel."""

    def __init__(self, name):
        self.name = name

    def run(self, *args, **kwargs):
        raise PlanError(f"kernel {self.name} was called: the plan never runs generated code")


# --------------------------------------------------------------------------- recording
class Recorder:
    """What Inductor writes while one step is traced: per compiled graph its wrapper code
    and scheduler nodes, and how often the measured step calls each graph."""

    def __init__(self):
        self.graphs = []            # one dict per compiled graph, in compile order
        self.calls = Counter()      # graph index -> calls in the measured step
        self.measuring = False
        self.function = None        # "forward_loss" or "update": the compiled function being traced
        self.inside = 0             # >0 while a compiled graph runs (outside-op counting)
        self.graphed = ()           # the compiled functions whose graphs replay as CUDA graphs
        self._pending = None        # the graph Inductor is lowering now

    @contextmanager
    def tracing(self, function):
        previous, self.function = self.function, function
        try:
            yield
        finally:
            self.function = previous

    def save_output_code(self, code):
        if self._pending is None:
            raise PlanError("GraphLowering.save_output_code was called outside a graph the plan compiles")
        self._pending["code"] = code

    def read_scheduler(self, graph_lowering):
        if self._pending is None:
            return
        scheduler = getattr(graph_lowering, "scheduler", None)
        if scheduler is None or not hasattr(scheduler, "nodes"):
            raise PlanError("torch internal GraphLowering.scheduler.nodes is missing after codegen")
        self._pending["nodes"] = [describe_node(node) for node in scheduler.nodes]


# Origins that name no arithmetic of their own (left out of a kernel's operation names).
PLUMBING = {"convert_element_type", "reshape", "view", "unsqueeze", "squeeze", "clone", "permute",
            "expand", "<built-in function getitem>", "_to_copy", "copy", "alias", "t", "slice", "select"}


def describe_node(node):
    """One scheduler node: its kind, bytes read + written, origins (module path, aten ops)."""
    try:
        if isinstance(getattr(node, "node", None), internal("torch._inductor.ir.UserDefinedTritonKernel")):
            moved = user_kernel_bytes(node.node)
        else:
            moved = node.get_read_write_buffers_sizes()
    except PlanError:
        raise
    except Exception as error:       # noqa: BLE001 -- a moved internal must name itself
        raise PlanError(f"torch internal BaseSchedulerNode.get_read_write_buffers_sizes failed: "
                        f"{type(error).__name__}: {error}") from None
    kind = type(node).__name__
    modules, ops = Counter(), Counter()
    for sub in node.get_nodes() if hasattr(node, "get_nodes") else [node]:
        ir_node = getattr(sub, "node", None)
        for origin in getattr(ir_node, "origins", ()) or ():
            if origin.op != "call_function":
                continue
            op = re.sub(r"^(aten|prims)\.|\.(default|Tensor|Scalar)$", "", str(origin.target))
            if op not in PLUMBING:
                ops[op] += 1
            modules[origin_module(origin)] += 1
    extern = getattr(getattr(node, "node", None), "python_kernel_name", None) if "Extern" in kind else None
    if extern:
        extern = re.sub(r"^(extern_kernels|torch\.ops\.aten)\.|\.default$", "", extern)
    return {"kind": kind, "bytes": int(moved), "extern": extern,
            "module": modules.most_common(1)[0][0] if modules else "",
            "ops": [op for op, _ in ops.most_common(4)]}


def plan_error_in(error: BaseException):
    """The PlanError that `error` wraps (Inductor re-raises what its passes raise as its own
    error, with the original as cause or context), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, PlanError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def user_kernel_bytes(kernel) -> int:
    """Bytes one of our Triton kernels reads and writes: each tensor argument its Triton IR
    loads from, once, and each it stores to, once (Inductor's own analysis of the kernel,
    UserDefinedTritonKernel.arg_accesses). Inductor's node-level count would also count
    every output as read (an output is a mutated argument) and an argument the kernel never
    loads (a pointer passed only to fill a slot, like affine_gelu's residual without one).
    torch 2.11 analyses only the stores (UserDefinedTritonKernel.mutable_args): there every
    tensor argument not stored to counts as read."""
    accesses = getattr(kernel, "arg_accesses", None)
    if accesses is not None and hasattr(kernel, "kernel_args"):
        reads = [kernel.kernel_args.get(dep.name) for dep in accesses.read_writes.reads]
        writes = [kernel.kernel_args.get(dep.name) for dep in accesses.read_writes.writes]
    elif hasattr(kernel, "mutable_args") and hasattr(kernel, "inputs"):
        writes = list(kernel.mutable_args)
        written = {t.get_name() for t in writes}
        reads = [t for t in kernel.inputs if t.get_name() not in written]
    else:
        raise PlanError(f"torch internal UserDefinedTritonKernel.arg_accesses (or mutable_args and inputs) is "
                        f"missing (torch {torch.__version__}): bench/gpu_plan.py needs updating for this release")

    def tensor_bytes(tensors) -> int:
        seen, total = set(), 0
        for tensor in tensors:
            if tensor is None or not hasattr(tensor, "get_size"):
                continue
            name = tensor.get_name()
            if name in seen:
                continue
            seen.add(name)
            numel = 1
            for size in tensor.get_size():
                numel *= int(size)
            total += numel * tensor.get_dtype().itemsize
        return total

    return tensor_bytes(reads) + tensor_bytes(writes)


def origin_module(fx_node) -> str:
    """The network module an FX node comes from (the forward's module path, which AOTAutograd
    copies to the backward's nodes as fwd_nn_module_stack), else the source line."""
    meta = fx_node.meta
    stack = meta.get("nn_module_stack") or meta.get("fwd_nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return clean_module_path(path)
    trace = meta.get("stack_trace") or ""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip().startswith("File")]
    if lines:
        match = re.search(r'File "([^"]+)", line (\d+), in (\S+)', lines[-1])
        if match:
            return f"{os.path.relpath(match.group(1), ROOT)}:{match.group(2)} {match.group(3)}"
    return ""


def clean_module_path(path: str) -> str:
    """`L['model'].group1.conv1` or `L__model___group1_conv1` -> `group1.conv1`."""
    path = re.sub(r"^L\['[^']+'\]\.?", "", path)
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    return path.lstrip(".") or "(network)"


def parse_wrapper(code: str, ours: dict) -> dict:
    """Launches and extern calls in a graph's wrapper code: its `call` (a top-level function,
    or a `Runner.call` method in torch 2.14), with the kernels' sources (string literals) cut.
    A launch is ours when the kernel Inductor defines under its name has the signature of
    one of ours (`ours`: our_kernels()); it is counted as "module.kernel"."""
    sources = {name: source for name, source in re.findall(
        r"^(\w+) = async_compile\.triton\(\s*'\w+',\s*'''(.*?)'''", code, re.S | re.M)}
    owner = {}
    for name, source in sources.items():
        if name.startswith("triton_"):          # Inductor's own kernels
            continue
        for definition in re.findall(r"^def \w+\(.*?\):", source, re.S | re.M):
            if signature(definition) in ours:
                owner[name] = ours[signature(definition)]
    code = re.sub(r"'''.*?'''|\"\"\".*?\"\"\"", "''", code, flags=re.S)
    starts = list(re.finditer(r"^( *)def call\(", code, re.M))
    if not starts:
        raise PlanError("Inductor's wrapper code has no `def call(` (its text layout moved)")
    start = starts[-1]
    end = re.compile(r"^ {0,%d}\S" % len(start.group(1)), re.M).search(code, start.end())
    body = code[start.start():end.start() if end else len(code)]
    launches, extern, ours_launches = Counter(), Counter(), Counter()
    for match in re.finditer(r"^\s*(\w+)\.run\(", body, re.M):
        launches[match.group(1)] += 1
        if match.group(1) in owner:
            ours_launches[owner[match.group(1)]] += 1
    for match in re.finditer(r"extern_kernels\.(\w+)\(", body):
        extern[match.group(1)] += 1
    for match in re.finditer(r"torch\.ops\.aten\.(\w+)(?:\.\w+)?\(", body):
        extern[match.group(1)] += 1
    return {"launches": dict(launches), "ours": dict(ours_launches), "extern": dict(extern)}


def signature(definition: str) -> str:
    """A kernel's `def name(arguments):` line without its white space."""
    return re.sub(r"\s+", "", definition)


def our_kernels() -> dict:
    """{signature of its `def` line: "module.kernel"} of every @triton.jit kernel in kernels/*.py
    (every module of the package, so that a new kernel file is never counted as Inductor's)."""
    from triton.runtime.jit import JITFunction
    import kernels
    found = {}
    for name, kernel in kernels.triton_kernels().items():
        if not isinstance(kernel, JITFunction):         # the interpreter's: no GPU code to read
            continue
        definition = re.search(r"^def \w+\(.*?\):", kernel.src, re.S | re.M)
        if definition is None:
            raise PlanError(f"kernel {name} has no `def` line in its source")
        found[signature(definition.group(0))] = name
    return found


# --------------------------------------------------------------------------- compiling
def to_cuda_graph(gm):
    """A copy of `gm` whose device arguments name cuda:0."""
    graph = copy.deepcopy(gm.graph)
    cuda = torch.device("cuda", 0)

    def swap(value):
        if isinstance(value, torch.device) and value.type == "cpu":
            return cuda
        if isinstance(value, str) and value == "cpu":
            return "cuda:0"
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        return value
    for node in graph.nodes:
        node.args, node.kwargs = swap(node.args), swap(node.kwargs)
    return torch.fx.GraphModule(gm, graph)


def graph_flops(gm) -> int:
    """Matmul and convolution FLOPs of a graph whose nodes carry fake values (meta["val"]),
    by torch.utils.flop_counter's formulas."""
    from torch.utils.flop_counter import flop_registry

    def value(arg):
        return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg
    total = 0
    for node in gm.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        if node.op == "call_function" and packet in flop_registry:
            args, kwargs = torch.utils._pytree.tree_map(value, (node.args, node.kwargs))
            total += flop_registry[packet](*args, **kwargs, out_val=node.meta.get("val"))
    return int(total)


def plan_backend(recorder: Recorder, run_mode):
    """A torch.compile backend: Inductor's compile_fx with an inner compile that writes CUDA
    code for a cuda:0 copy of each graph and returns the CPU graph, run on `run_mode`'s fake
    tensors (the step's own)."""
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._guards import detect_fake_mode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    def inner_compile(gm, example_inputs, **kwargs):
        fake_mode = detect_fake_mode(example_inputs)
        if fake_mode is None:
            raise PlanError("torch._guards.detect_fake_mode found no fake mode in a graph's inputs")
        kind = ("backward" if kwargs.get("is_backward") else
                "update" if recorder.function == "update" else "forward")
        cuda_gm = to_cuda_graph(gm)
        with fake_mode:
            cuda_inputs = [x.to("cuda:0") if isinstance(x, torch.Tensor) else x for x in example_inputs]
            FakeTensorProp(cuda_gm, fake_mode).propagate_dont_convert_inputs(*cuda_inputs)
        index = len(recorder.graphs)
        recorder._pending = {"index": index, "function": recorder.function, "kind": kind,
                             "graphed": recorder.function in recorder.graphed,
                             "flops": graph_flops(cuda_gm), "code": None, "nodes": None}
        try:
            compile_fx_inner(cuda_gm, cuda_inputs, **kwargs)
        finally:
            graph, recorder._pending = recorder._pending, None
        if graph["code"] is None or graph["nodes"] is None:
            raise PlanError("Inductor's inner compile wrote no wrapper code "
                            "(GraphLowering.save_output_code / codegen not reached)")
        recorder.graphs.append(graph)

        def run(args):
            if recorder.measuring:
                recorder.calls[index] += 1
            recorder.inside += 1
            try:
                with run_mode:
                    out = gm(*args)
            finally:
                recorder.inside -= 1
            args.clear()
            return out
        run._boxed_call = True
        return run

    def backend(gm, example_inputs):
        return compile_fx(gm, example_inputs, inner_compile=inner_compile)
    return backend


@contextmanager
def recording(recorder: Recorder):
    """Route GraphLowering's output code and scheduler to `recorder` while inside."""
    from torch._inductor.graph import GraphLowering
    saved_code, saved_codegen = GraphLowering.save_output_code, GraphLowering.codegen

    def codegen(self, *args, **kwargs):
        result = saved_codegen(self, *args, **kwargs)
        recorder.read_scheduler(self)
        return result
    GraphLowering.save_output_code = staticmethod(recorder.save_output_code)
    GraphLowering.codegen = codegen
    try:
        yield
    finally:
        GraphLowering.save_output_code, GraphLowering.codegen = saved_code, saved_codegen


class OutsideOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops that run while no compiled graph does (the training loop's own),
    the bytes they read + write (every tensor argument and result, whole) and their matmul
    and convolution FLOPs (torch.utils.flop_counter's formulas)."""

    VIEWS = ("detach", "alias", "view", "_unsafe_view", "t", "lift_fresh", "device", "transpose",
             "permute", "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided", "_reshape_alias")

    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder, self.ops = recorder, Counter()
        self.bytes = self.flops = 0

    def reset(self):
        self.ops, self.bytes, self.flops = Counter(), 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.recorder.inside and self.recorder.measuring:
            name = func.__name__.split(".")[0]
            if name not in self.VIEWS:
                self.ops[name] += 1
                tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                           if isinstance(t, torch.Tensor)]
                self.bytes += sum(t.numel() * t.element_size() for t in tensors)
                packet = func.overloadpacket
                if packet in flop_registry:
                    self.flops += int(flop_registry[packet](*args, **kwargs, out_val=out))
        return out


# --------------------------------------------------------------------------- one plan
def fake_network(model, fake_mode):
    """Swap `model`'s parameters and buffers for fake tensors of the same shapes, strides
    and dtypes (module.to() cannot move to fake tensors)."""
    swapped = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                if id(param) not in swapped:
                    swapped[id(param)] = torch.nn.Parameter(fake_mode.from_tensor(param.detach()),
                                                            requires_grad=param.requires_grad)
                module._parameters[name] = swapped[id(param)]
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                if id(buffer) not in swapped:
                    swapped[id(buffer)] = fake_mode.from_tensor(buffer)
                module._buffers[name] = swapped[id(buffer)]
    return model


def released_network(model):
    """`model` with the plain PyTorch modules of the records' scripts: every MaxPool2x2 an
    nn.MaxPool2d(2), every BatchNorm an nn.BatchNorm2d on the same tensors (each counting
    its own batches). In place; returns `model`."""
    from engine.training.layers import BatchNorm, MaxPool2x2
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MaxPool2x2):
                setattr(module, name, torch.nn.MaxPool2d(2))
            elif isinstance(child, BatchNorm):
                plain = torch.nn.BatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum)
                plain.weight, plain.bias = child.weight, child.bias
                plain.running_mean, plain.running_var = child.running_mean, child.running_var
                plain.num_batches_tracked = child.num_batches_tracked
                plain.train(child.training)
                setattr(module, name, plain)
    return model


def plan_one(recipe_spec: str, variant: str, overrides: dict, dtype=torch.float16) -> dict:
    """The plan of one compiled training step of `recipe_spec` with `--kernels variant`."""
    import numpy as np
    from torch._subclasses.fake_tensor import FakeTensorMode
    from engine.recipe_files import find_recipe
    from engine.training.data import CifarLoader
    from engine.training.ops import make_ops
    from engine.training.train import EMA, Trainer
    from engine.training.optim import Optimizers

    recipe = find_recipe(recipe_spec)
    release = RELEASES.get(recipe.name) if variant == RELEASE else None
    if variant == RELEASE and release is None:
        raise PlanError(f"--kernels {RELEASE}: no released script is known for recipe {recipe.name} "
                        f"(known: {', '.join(RELEASES)})")
    config = recipe.make_config(**overrides)
    torch._dynamo.reset()
    torch.manual_seed(0)
    recorder = Recorder()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    backend = plan_backend(recorder, fake_mode)
    ops = make_ops("eager" if release else variant)
    trainer = Trainer(config, ops, "cpu", dtype)
    model = fake_network(config.build_network(ops, "cpu", dtype), fake_mode)
    ema = EMA(fake_network(config.build_network(ops, "cpu", dtype), fake_mode)) if config.has_ema else None
    optimizers = Optimizers(config.optimizer_groups(model))
    if release:                 # after the groups are made: they find the norms by our BatchNorm type
        released_network(model)
    outside = OutsideOps(recorder)
    forward_loss = torch.compile(trainer._forward_loss, backend=backend, fullgraph=True)
    update = torch.compile(trainer.update, backend=backend, fullgraph=True)

    def traced_forward_loss(*args):
        with recorder.tracing("forward_loss"):
            return forward_loss(*args)

    def traced_update(*args):
        with recorder.tracing("update"):
            return update(*args)
    trainer.forward_loss, trainer.update = traced_forward_loss, traced_update
    if release:
        recorder.graphed = ("forward_loss",)       # max-autotune: the network's graphs as CUDA graphs
        trainer.train_step = released_step(release, config, model, backend, outside, traced_update)

    with fake_mode:
        images = torch.empty(config.batch_size, 3, 32, 32, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        labels = torch.zeros(config.batch_size, dtype=torch.int64)
        loss_sum = torch.zeros((), dtype=torch.float32)
        correct = torch.zeros((), dtype=torch.int64)
    phases = []
    for start, end in step_phases(optimizers.groups, config.total_steps):
        # A phase's graphs are compiled at its first step; its last step is the one planned.
        for step, measured in ((start, False), (end - 1, True)):
            recorder.measuring, recorder.calls = measured, Counter()
            outside.reset()
            if ema is not None and measured:
                ema.started = True      # in a real run the EMA's first copy came steps before
            with recording(recorder):
                # The training loop's body (Trainer.run); what runs outside compiled code is
                # counted (no dispatch mode may be active while torch.compile traces).
                if release:             # their scripts set Python-float learning rates: no device work
                    optimizers.set_step(step)
                else:
                    with outside:
                        optimizers.set_step(step)
                loss, batch_correct = trainer.train_step(model, optimizers, images, labels)
                if not release:         # their loops keep no per-step sums
                    with outside:
                        loss_sum += loss.float()
                        correct += batch_correct
                        if ema is not None and config.ema_updates_after(step):
                            ema.update(model, config.ema_step_decay)
        phases.append({"first_step": start, "steps": end - start, "calls": recorder.calls,
                       "outside": dict(outside.ops), "outside_bytes": outside.bytes,
                       "outside_flops": outside.flops})

    # The loader's epoch (augmentation, shuffling) runs outside compiled code once per epoch.
    outside.reset()
    n = 2 * config.batch_size
    loader = CifarLoader(np.zeros((n, 32, 32, 3), np.uint8), np.zeros(n, np.int64),
                         config.replace(train_images=n), True, "cpu", dtype)
    with outside:
        recorder.measuring = True
        for _ in loader.epoch(torch.Generator().manual_seed(0), 0):
            pass
    recorder.measuring = False
    epoch = {"ops": dict(outside.ops), "bytes": outside.bytes, "flops": outside.flops}
    return summarise(recipe, config, variant, dtype, recorder, phases, epoch)


def released_step(scope: str, config, model, backend, outside: OutsideOps, update):
    """A train_step(model, optimizers, images, labels) compiled as a record's released script
    compiles it (RELEASES): "model", the network compiled and the loss (with its backward)
    eager; "forward_loss", the forward + loss compiled. Both then apply `update` (the
    optimizer update compiled as ours, outside the CUDA graphs); no accuracy count (their
    loops keep none)."""
    if scope == "model":
        network = torch.compile(model, backend=backend, fullgraph=True)

        def forward_loss(images, labels):
            logits = network(images)
            with outside:
                return config.loss(logits, labels)
    else:
        step = torch.compile(lambda images, labels: config.loss(model(images), labels),
                             backend=backend, fullgraph=True)

        def forward_loss(images, labels):
            return step(images, labels)
    recorder = outside.recorder

    def train_step(_model, optimizers, images, labels):
        with recorder.tracing("forward_loss"):
            loss = forward_loss(images, labels)
        with outside:
            loss.backward()
        optimizers.step(update)
        return loss.detach(), None
    return train_step


def step_phases(groups, total_steps: int) -> list:
    """[(first step, end)] of the run's phases: a group that stops training (Group.trains_until)
    starts a phase whose step runs other graphs."""
    stops = {getattr(g, "trains_until", None) for g in groups}
    starts = sorted({0} | {s for s in stops if s is not None and 0 < s < total_steps})
    return list(zip(starts, starts[1:] + [total_steps]))


# --------------------------------------------------------------------------- summary
def step_figures(recorder, graph_plans, calls) -> dict:
    """Per-step sums over the graphs a step calls (`calls`: graph index -> calls)."""
    step, extern_ops, kinds, heavy = Counter(), Counter(), defaultdict(Counter), []
    for graph, plan in zip(recorder.graphs, graph_plans):
        n = calls.get(graph["index"], 0)
        if not n:
            continue
        for name in FIGURES:
            step[name] += n * plan[name]
            kinds[graph["kind"]][name] += n * plan[name]
        if graph["graphed"]:
            step["launches_graphed"] += n * (plan["launches"] + plan["extern_calls"])
        for op, count in plan["extern"].items():
            extern_ops[op] += n * count
        for node in graph["nodes"]:
            if node["bytes"]:
                kind = ("extern " + node["extern"] if node["extern"] else
                        "our kernel" if node["kind"].startswith("ExternKernel") else    # a user Triton kernel
                        node["kind"].replace("SchedulerNode", "").lower() or "kernel")
                heavy.append({"graph": graph["kind"], "kind": kind,
                              "bytes": node["bytes"] * n, "module": node["module"], "ops": node["ops"]})
    heavy.sort(key=lambda item: -item["bytes"])
    return {"step": {name: step[name] for name in FIGURES + ("launches_graphed",)}, "by_graph_kind": {k: dict(v) for k, v in kinds.items()},
            "extern_by_op": dict(extern_ops), "heaviest": heavy}


FIGURES = ("launches", "launches_ours", "launches_inductor", "extern_calls", "bytes", "extern_bytes", "flops")


def host_launches(step: dict, outside_ops: float) -> float:
    """The launches a step makes from the host: its launches and extern calls that no CUDA
    graph replays (step["launches_graphed"]), and the ops outside compiled code."""
    return step["launches"] + step["extern_calls"] - step["launches_graphed"] + outside_ops


def predict(step: dict, outside: dict) -> dict:
    """Seconds of one step on each card (the model in bench/NOTES.md). `outside`: the ops,
    bytes and FLOPs per step outside compiled code. A launch costs LAUNCH_OVERHEAD unless a
    CUDA graph replays it: in "ms_per_step" the graphs of step["launches_graphed"] (a
    release's network), in "ms_per_step_cuda_graphs" every compiled graph."""
    predicted = {}
    for card, rates in CARDS.items():
        traffic = (step["bytes"] + outside["bytes"]) / rates["copy_rate"]
        matrix = (step["flops"] + outside["flops"]) / rates["matrix_rate"]
        launches = host_launches(step, outside["ops"]) * LAUNCH_OVERHEAD
        predicted[card] = {"traffic_ms": 1e3 * traffic, "matrix_ms": 1e3 * matrix, "launch_ms": 1e3 * launches,
                           "ms_per_step": 1e3 * (traffic + matrix + launches),
                           "ms_per_step_cuda_graphs": 1e3 * (traffic + matrix + outside["ops"] * LAUNCH_OVERHEAD)}
    return predicted


def summarise(recipe, config, variant, dtype, recorder, phases, epoch_outside) -> dict:
    """Per-graph, per-step and per-run figures of one plan (see the module's docstring). The
    per-step figures are those of the run's last phase (every step, for most recipes)."""
    if not recorder.graphs:
        raise PlanError("no graph was compiled: torch.compile never reached the plan's inner compile")
    ours_names = our_kernels()
    graph_plans = []
    for graph in recorder.graphs:
        wrapper = parse_wrapper(graph["code"], ours_names)
        launches, ours = sum(wrapper["launches"].values()), sum(wrapper["ours"].values())
        graph_plans.append({
            "function": graph["function"], "kind": graph["kind"], "graphed": graph["graphed"],
            "launches": launches, "launches_ours": ours,
            "launches_inductor": launches - ours, "extern_calls": sum(wrapper["extern"].values()),
            "bytes": sum(n["bytes"] for n in graph["nodes"]),
            "extern_bytes": sum(n["bytes"] for n in graph["nodes"] if n["extern"]),
            "flops": graph["flops"], "extern": wrapper["extern"], "our_kernels": wrapper["ours"]})
    if not phases:
        raise PlanError("the plan measured no step")
    per_phase = []
    for phase in phases:
        if not any(phase["calls"].values()):
            raise PlanError("the planned step called no compiled graph (the compiled functions were not used)")
        figures = step_figures(recorder, graph_plans, phase["calls"])
        step = figures["step"]
        if step["launches"] + step["extern_calls"] == 0 or step["bytes"] == 0:
            raise PlanError(f"the plan came out empty (launches {step['launches']}, extern calls "
                            f"{step['extern_calls']}, bytes {step['bytes']}): Inductor's output moved")
        per_epoch = 1 / config.steps_per_epoch
        outside = {"ops": sum(phase["outside"].values()) + sum(epoch_outside["ops"].values()) * per_epoch,
                   "bytes": phase["outside_bytes"] + epoch_outside["bytes"] * per_epoch,
                   "flops": phase["outside_flops"] + epoch_outside["flops"] * per_epoch}
        per_phase.append({"first_step": phase["first_step"], "steps": phase["steps"],
                          "calls_per_step": {str(k): v for k, v in phase["calls"].items() if v},
                          **figures, "outside": phase["outside"], "outside_ops": outside["ops"],
                          "outside_bytes": outside["bytes"], "outside_flops": outside["flops"],
                          "predicted": predict(step, outside)})
    last = per_phase[-1]
    predicted = copy.deepcopy(last["predicted"])
    for card, q in predicted.items():
        q["s_per_run"] = sum(p["steps"] * p["predicted"][card]["ms_per_step"] for p in per_phase) / 1e3
        q["s_per_run_cuda_graphs"] = sum(p["steps"] * p["predicted"][card]["ms_per_step_cuda_graphs"]
                                         for p in per_phase) / 1e3
    for index, plan in enumerate(graph_plans):
        plan["calls_per_step"] = last["calls_per_step"].get(str(index), 0)
    per_run = {   # every step of every phase, outside work included; launches as each step runs them
        "bytes": sum(p["steps"] * (p["step"]["bytes"] + p["outside_bytes"]) for p in per_phase),
        "flops": sum(p["steps"] * (p["step"]["flops"] + p["outside_flops"]) for p in per_phase),
        "launches": sum(p["steps"] * (p["step"]["launches"] + p["step"]["extern_calls"] + p["outside_ops"])
                        for p in per_phase),
        "launches_not_graphed": sum(p["steps"] * host_launches(p["step"], p["outside_ops"]) for p in per_phase)}
    import triton
    defaults = type(config)().to_dict()
    return {
        "recipe": recipe.name, "recipe_file": recipe.file, "kernels": variant,
        "batch_size": config.batch_size, "dtype": str(dtype).replace("torch.", ""),
        "steps_per_run": config.total_steps,
        "overrides": {k: v for k, v in config.to_dict().items() if v != defaults.get(k)},
        "torch": torch.__version__, "triton": triton.__version__,
        "step": last["step"], "by_graph_kind": last["by_graph_kind"], "extern_by_op": last["extern_by_op"],
        "graphs": graph_plans,
        "outside": {"per_step": last["outside"], "per_epoch_loader": epoch_outside["ops"],
                    "ops_per_step": last["outside_ops"], "bytes_per_step": last["outside_bytes"],
                    "flops_per_step": last["outside_flops"]},
        "graphed": sorted(recorder.graphed),
        "predicted": predicted, "per_run": per_run, "heaviest": last["heaviest"],
        "phases": [{k: v for k, v in p.items() if k != "heaviest"} for p in per_phase],
        "code": [graph["code"] for graph in recorder.graphs],
    }


def dump_code(folder: str, plan: dict):
    os.makedirs(folder, exist_ok=True)
    for index, (graph, code) in enumerate(zip(plan["graphs"], plan.pop("code"))):
        name = f"{os.path.basename(plan['recipe'])}-{plan['kernels']}-{index}-{graph['kind']}.py"
        with open(os.path.join(folder, name), "w") as f:
            f.write(code)


def fmt_gb(n):
    return f"{n / 1e9:.3f}"


def text_report(plan: dict) -> str:
    s, p = plan["step"], plan["predicted"]
    kinds = plan["by_graph_kind"]
    per_kind = " / ".join(f"{kinds.get(k, {}).get('launches', 0)}" for k in TENSOR_KINDS)
    lines = [
        f"== {plan['recipe']} --kernels {plan['kernels']}  (batch {plan['batch_size']}, {plan['dtype']}, "
        f"{plan['steps_per_run']} steps/run; torch {plan['torch']}, triton {plan['triton']})",
        *(["  phases                 " + "; ".join(
            f"steps {p['first_step']}-{p['first_step'] + p['steps'] - 1}: {p['step']['launches']} launches, "
            f"{p['step']['extern_calls']} extern, {fmt_gb(p['step']['bytes'])} GB"
            for p in plan["phases"]) + " (figures below: the last phase)"] if len(plan["phases"]) > 1 else []),
        f"  Triton launches/step   {s['launches']} (forward / backward / update {per_kind}); "
        f"ours {s['launches_ours']}, Inductor's {s['launches_inductor']}",
        f"  extern calls/step      {s['extern_calls']}: " +
        ", ".join(f"{op} {n}" for op, n in sorted(plan["extern_by_op"].items(), key=lambda x: -x[1])),
        f"  bytes read+written     {fmt_gb(s['bytes'])} GB/step (extern {fmt_gb(s['extern_bytes'])}; " +
        ", ".join(f"{k} {fmt_gb(kinds.get(k, {}).get('bytes', 0))}" for k in TENSOR_KINDS) + ")",
        f"  matmul + conv          {s['flops'] / 1e9:.1f} GFLOP/step",
        f"  outside compiled code  {sum(plan['outside']['per_step'].values())} aten ops/step "
        f"({', '.join(f'{k} {v}' for k, v in sorted(plan['outside']['per_step'].items()))}); "
        f"loader {sum(plan['outside']['per_epoch_loader'].values())} ops/epoch; with the loader's share "
        f"{fmt_gb(plan['outside']['bytes_per_step'])} GB, {plan['outside']['flops_per_step'] / 1e9:.1f} GFLOP per step",
    ]
    if plan["kernels"] == RELEASE:
        lines.insert(1, f"  as released            compiled where the record's script compiles "
                        f"({RELEASES[plan['recipe']]}), plain PyTorch modules; the network's graphs "
                        f"({s['launches_graphed']} launches + extern calls) replayed as CUDA graphs (max-autotune)")
    r = plan["per_run"]
    lines.append(f"  per run ({plan['steps_per_run']} steps)  {r['bytes'] / 1e9:.0f} GB, {r['flops'] / 1e12:.0f} TFLOP, "
                 f"{r['launches']:.0f} launches and extern calls ({r['launches_not_graphed']:.0f} of them launched "
                 f"from the host)")
    for card, q in p.items():
        lines.append(f"  predicted {card}         {q['ms_per_step']:.2f} ms/step = traffic {q['traffic_ms']:.2f} "
                     f"+ matrix {q['matrix_ms']:.2f} + launches {q['launch_ms']:.2f}; {q['s_per_run']:.2f} s/run "
                     f"({q['s_per_run_cuda_graphs']:.2f} with CUDA graphs)")
    lines.append("  heaviest kernels (GB/step, graph, kind, module: ops):")
    for item in plan["heaviest"]:
        lines.append(f"    {fmt_gb(item['bytes'])}  {item['graph']:<8} {item['kind']:<28} "
                     f"{item['module'] or '?'}: {', '.join(item['ops'])}")
    return "\n".join(lines)


def csv_row(plan: dict, commit: str, date: str) -> dict:
    s, p = plan["step"], plan["predicted"]
    return {
        "date": date, "commit": commit, "recipe": plan["recipe"], "kernels": plan["kernels"],
        "batch_size": plan["batch_size"], "dtype": plan["dtype"], "torch": plan["torch"],
        "triton": plan["triton"], "launches": s["launches"], "launches_ours": s["launches_ours"],
        "launches_inductor": s["launches_inductor"], "extern_calls": s["extern_calls"],
        "bytes_gb": round(s["bytes"] / 1e9, 4), "extern_gb": round(s["extern_bytes"] / 1e9, 4),
        "gflop": round(s["flops"] / 1e9, 2), "outside_ops": round(plan["outside"]["ops_per_step"], 2),
        "graphs": len(plan["graphs"]),
        "predicted_ms_step_h100": round(p["H100"]["ms_per_step"], 3),
        "predicted_ms_step_h200": round(p["H200"]["ms_per_step"], 3),
        "predicted_s_run_h100": round(p["H100"]["s_per_run"], 3),
        "predicted_s_run_h200": round(p["H200"]["s_per_run"], 3),
        "predicted_s_run_cuda_graphs_h100": round(p["H100"]["s_per_run_cuda_graphs"], 3),
        "predicted_s_run_cuda_graphs_h200": round(p["H200"]["s_per_run_cuda_graphs"], 3),
        "steps_per_run": plan["steps_per_run"],
        "outside_gb": round(plan["outside"]["bytes_per_step"] / 1e9, 4),
        "outside_gflop": round(plan["outside"]["flops_per_step"] / 1e9, 2),
        "launches_graphed": s["launches_graphed"],
        "run_gb": round(plan["per_run"]["bytes"] / 1e9, 1),
        "run_launches_not_graphed": round(plan["per_run"]["launches_not_graphed"]),
    }


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# bench/train.py's compiled variants -> (the plan's kernels, with CUDA graphs)
TRAIN_VARIANTS = {"compile": ("eager", False), "compile+triton": ("triton", False),
                  "compile+cudagraphs": ("eager", True), "compile+triton+cudagraphs": ("triton", True)}


def latest_predictions(results_root: str) -> dict:
    """{(recipe, kernels): the newest row} of the newest bench/results/gpu_plan-*/plan.csv."""
    folders = sorted(d for d in os.listdir(results_root) if d.startswith("gpu_plan-")
                     and os.path.isfile(os.path.join(results_root, d, "plan.csv")))
    if not folders:
        return {}
    with open(os.path.join(results_root, folders[-1], "plan.csv")) as f:
        return {(row["recipe"], row["kernels"]): row for row in csv.DictReader(f)}


def beside(train_log: str, results_root: str) -> str:
    """bench/train.py's "row RECIPE/VARIANT: ..." lines of `train_log`, each followed by the
    plan's predicted seconds of training per run for that variant (bench/device_check.sh)."""
    predictions, lines = latest_predictions(results_root), []
    with open(train_log, errors="replace") as f:
        rows = [line.rstrip("\n") for line in f if line.startswith("row ")]
    for line in rows:
        lines.append(line)
        match = re.match(r"row ([^/]+)/(\S+?):", line)
        if not match or match.group(2) not in TRAIN_VARIANTS:
            continue
        kernels, graphs = TRAIN_VARIANTS[match.group(2)]
        row = predictions.get((match.group(1), kernels))
        if row is None:
            lines.append(f"    predicted: no GPU plan row for {match.group(1)} --kernels {kernels}")
            continue
        key = "predicted_s_run_cuda_graphs_" if graphs else "predicted_s_run_"
        lines.append(f"    predicted (GPU plan at {row['commit']}): {row.get(key + 'h200') or '?'} s training per run "
                     f"on an H200, {row.get(key + 'h100') or '?'} s on an H100 (measured: the s training above)")
    return "\n".join(lines)


def check_results_folder(folder: str):
    """PlanError unless `folder`'s plan.csv is absent or has this version's columns (rows are
    appended, never rewritten: an older file's columns would not line up)."""
    path = os.path.join(folder, "plan.csv")
    if os.path.exists(path):
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_FIELDS:
            raise PlanError(f"{path} has the columns of another gpu_plan version; give --results a new folder")


def parse_overrides(items) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set {item}: give FIELD=VALUE, e.g. --set base_width=8")
        name, value = item.split("=", 1)
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", action="append", help="a built-in recipe or a recipe file (repeatable; "
                        f"default: {', '.join(DEFAULT_RECIPES)})")
    parser.add_argument("--kernels", action="append", choices=VARIANTS + (RELEASE,),
                        help=f"variant (repeatable; default: {' and '.join(VARIANTS)}); {RELEASE}: the record's "
                        f"step as its released script compiles it ({', '.join(RELEASES)})")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="change a recipe field (tests: tiny widths and batches)")
    parser.add_argument("--json", help="write every plan as JSON here")
    parser.add_argument("--results", help="a folder: one row per plan appended to plan.csv, one line to plans.jsonl")
    parser.add_argument("--dump", help="a folder: every graph's wrapper code (with its kernels) as a .py file")
    parser.add_argument("--beside", metavar="TRAIN_LOG", help="print bench/train.py's row lines of TRAIN_LOG with "
                        "the newest committed plan's prediction under each, and stop (bench/device_check.sh)")
    parser.add_argument("--top", type=int, default=12, help="heaviest kernels to list (default 12)")
    args = parser.parse_args(argv)
    if args.beside:
        print(beside(args.beside, os.path.join(ROOT, "bench", "results")))
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("gpu_plan: unset TRITON_INTERPRET (the plan needs our kernels as triton_ops, as on a GPU)",
              file=sys.stderr)
        return 2
    commit, date = git_commit(), datetime.date.today().isoformat()      # the code the plans read
    try:
        if args.results:
            check_results_folder(args.results)
        overrides = parse_overrides(args.set)
        install_stand_in()
        plans = []
        for recipe in args.recipe or DEFAULT_RECIPES:
            for variant in args.kernels or VARIANTS:
                plan = plan_one(recipe, variant, overrides)
                plan["heaviest"] = plan["heaviest"][:args.top]
                if args.dump:
                    dump_code(args.dump, plan)
                plan.pop("code", None)
                plans.append(plan)
                print(text_report(plan), flush=True)
    except (PlanError, ValueError) as error:
        print(f"gpu_plan: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except Exception as error:          # noqa: BLE001 -- a PlanError raised inside Inductor's compile
        cause = plan_error_in(error)
        if cause is None:
            raise
        print(f"gpu_plan: {str(cause).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"commit": commit, "date": date, "plans": plans}, f, indent=1)
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        with open(os.path.join(args.results, "plans.jsonl"), "a") as f:     # appended, never rewritten
            for plan in plans:
                f.write(json.dumps({"commit": commit, "date": date, **plan}) + "\n")
        path = os.path.join(args.results, "plan.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                writer.writeheader()
            for plan in plans:
                writer.writerow(csv_row(plan, commit, date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
