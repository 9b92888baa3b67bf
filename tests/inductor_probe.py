"""What torch.compile makes of the kernels' GPU registration, probed on a CPU.

Run in a process WITHOUT TRITON_INTERPRET (tests/test_kernels_inductor_path.py
starts it), so that `kernels` registers its operations as `triton_op`s, as on a
GPU. No kernel runs: each operation is compiled with a backend that only records
the forward and backward graphs AOTAutograd hands it (outputs are zeros of the
recorded shapes). Prints one JSON object:

  graphs:  case -> {"forward"|"backward": {"launches": ["module.kernel" per launch],
                                          "opaque": [cifar_speedrun ops left as calls],
                                          "cloned": [kernel arguments copied for safety],
                                          "copies": number of aten copy/clone nodes}}
           cases: each operation alone, and "network step": the engine's forward + loss
           (Trainer._forward_loss, what --compile compiles) at the recipe's widths
  sources: "module.kernel" -> the source Inductor re-emits for that kernel
           (the kernel with every @triton.jit helper it calls), which a GPU compiles.

Tracing asks Triton which arguments each kernel writes (by compiling it to Triton
IR); an argument it cannot rule out is cloned before every launch, a silent extra
copy. That analysis needs only a compile target, not a GPU, so a stand-in driver
names an sm_90 one. "cloned" lists the arguments cloned although they are not
fresh output buffers: it should be empty.
"""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from torch._functorch.aot_autograd import aot_module_simplified  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table  # noqa: E402
try:   # where torch 2.13+ keeps it; earlier releases (the GPU image's 2.11) in torch._inductor.utils
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
except ImportError:
    from torch._inductor.utils import user_defined_triton_kernel_transitive_closure_source_code
from triton.runtime.jit import JITFunction  # noqa: E402

import kernels  # noqa: E402



class TargetOnlyDriver:
    """Enough of a Triton driver for compiling kernels to Triton IR for an H100 (sm_90)."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):     # triton 3.6's wrap_triton asks for it when tracing
        return 0


triton.runtime.driver.set_active(TargetOnlyDriver())
mod = kernels.kernel_modules()          # every kernel file: "sources" must cover each one's kernels


def record(graphs, kind):
    def compiler(gm, example_inputs):
        launches, opaque, cloned = [], [], []
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            if "triton_kernel_wrapper" in str(node.target):
                kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
                while not isinstance(kernel, JITFunction):       # autotune wrappers (num_warps)
                    kernel = kernel.fn
                qualified = f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__}"
                launches.append(qualified)
                args = node.kwargs["kwargs"]
                cloned += [f"{qualified}.{name}" for name in node.kwargs["tensors_to_clone"]
                           if "empty" not in str(args[name].target)]
            elif "cifar_speedrun" in str(node.target):
                opaque.append(str(node.target))
        copies = sum(str(node.target) in ("aten.copy.default", "aten.clone.default")
                     for node in gm.graph.nodes)
        graphs[kind] = {"launches": launches, "opaque": opaque, "cloned": cloned, "copies": copies}
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        metas = [getattr(o, "meta", {}).get("val") if o is not None else None for o in outputs]

        def fake_run(args):
            return [torch.empty_strided(m.shape, m.stride(), dtype=m.dtype).zero_()
                    if isinstance(m, torch.Tensor) else m for m in metas]
        fake_run._boxed_call = True
        return fake_run
    return compiler


def probe(fn, inputs, backward=True):
    graphs = {}
    torch._dynamo.reset()

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=record(graphs, "forward"),
                                     bw_compiler=record(graphs, "backward"))
    out = torch.compile(fn, backend=backend, fullgraph=True)(*inputs)
    if backward:
        out.backward()
    return graphs


def t(*shape, channels_last=False, grad=True, dtype=torch.float16):
    x = torch.randn(shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(grad)


def probe_network():
    """The engine's compiled forward + loss with the Triton operations, at the recipe's
    widths (a batch of 8). The operations' own input checks refuse CPU tensors outside the
    interpreter; here nothing runs, so they are told it is one."""
    from engine.recipes.seed import Config
    from engine.training.ops import make_ops
    from engine.training.train import Trainer

    kernels._common.interpreting = lambda: True
    config = Config()
    trainer = Trainer(config, make_ops("triton"), "cpu", torch.float16)
    model = config.build_network(trainer.ops, "cpu", torch.float16)
    images = torch.randn(8, 3, 32, 32, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (8,))
    return probe(lambda images, labels: trainer._forward_loss(model, images, labels)[0], [images, labels])


def main():
    ag, pb, se, cs, ge, pc = (mod[n] for n in ("affine_gelu", "pool_batch_norm_gelu", "squeeze_excite",
                                               "channel_scale", "gelu", "patch_covariance"))
    # Each output is weighted by a gradient g of its own layout, as in the network: an
    # incoming gradient in another layout would be copied, and "copies" would count it.
    def weighted(op):
        return lambda *inputs: (op(*inputs[:-1]).float() * inputs[-1]).sum()
    cl, shape = dict(channels_last=True), (2, 8, 5, 5)
    cases = {
        "gelu": (weighted(ge._gelu_op), [t(*shape, **cl), t(*shape, **cl, grad=False, dtype=torch.float32)]),
        "affine_gelu channels_last": (
            weighted(lambda x, a, b: ag._affine_gelu_op(x, a, b, None)),
            [t(*shape, **cl), t(8, dtype=torch.float32), t(8, dtype=torch.float32),
             t(*shape, **cl, grad=False, dtype=torch.float32)]),
        "affine_gelu nchw + residual": (
            weighted(ag._affine_gelu_op),
            [t(*shape), t(8, dtype=torch.float32), t(8, dtype=torch.float32), t(*shape),
             t(*shape, grad=False, dtype=torch.float32)]),
        "batch_norm_gelu channels_last + residual": (
            weighted(lambda x, w, b, r: ag._batch_norm_gelu_op(x, w, b, 1e-5, r, None, False)[0]),
            [t(*shape, **cl), t(8, dtype=torch.float32), t(8, dtype=torch.float32), t(*shape, **cl),
             t(*shape, **cl, grad=False, dtype=torch.float32)]),
        "batch_norm_gelu channels_last, gated": (
            weighted(lambda x, w, b, g: ag._batch_norm_gelu_op(x, w, b, 1e-5, None, g, False)[0]),
            [t(*shape, **cl), t(8, dtype=torch.float32), t(8, dtype=torch.float32), t(2, 8),
             t(*shape, **cl, grad=False, dtype=torch.float32)]),
        "pool_batch_norm_gelu channels_last": (
            weighted(lambda x, w, b: pb._pool_batch_norm_gelu_op(x, w, b, 1e-5, False)[0]),
            [t(2, 8, 7, 7, **cl), t(8, dtype=torch.float32), t(8, dtype=torch.float32),
             t(2, 8, 3, 3, **cl, grad=False, dtype=torch.float32)]),
        "pool_batch_norm_gelu channels_last, silu": (
            weighted(lambda x, w, b: pb._pool_batch_norm_gelu_op(x, w, b, 1e-5, True)[0]),
            [t(2, 8, 7, 7, **cl), t(8, dtype=torch.float32), t(8, dtype=torch.float32),
             t(2, 8, 3, 3, **cl, grad=False, dtype=torch.float32)]),
        "squeeze_excite": (
            weighted(lambda r, w1, b1, w2, b2: se._squeeze_excite_op(r, w1, b1, w2, b2)[0]),
            [t(2, 32, 3, 3, **cl), t(2, 32), t(2), t(32, 2), t(32), t(2, 32, grad=False, dtype=torch.float32)]),
        "channel_scale": (weighted(cs._channel_scale_op),
                          [t(*shape, **cl), t(2, 8), t(*shape, **cl, grad=False, dtype=torch.float32)]),
    }
    graphs = {name: probe(fn, inputs) for name, (fn, inputs) in cases.items()}
    graphs["network step"] = probe_network()
    graphs["patch_covariance"] = probe(lambda x: pc._patch_covariance_op(x, 2)[1],
                                       [t(2, 3, 6, 6, grad=False, dtype=torch.float32)], backward=False)
    sources = {name: user_defined_triton_kernel_transitive_closure_source_code(kernel)
               for name, kernel in kernels.triton_kernels().items()}
    print(json.dumps({"graphs": graphs, "sources": sources}))


if __name__ == "__main__":
    main()
