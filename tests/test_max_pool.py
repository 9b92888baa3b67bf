"""The networks' 2x2 max-pool (engine.training.layers.MaxPool2x2): under torch.compile it
runs its own formula (one pass forward, one pass backward on a GPU) in place of
nn.MaxPool2d. That formula must give max_pool2d's values and gradients bit for bit:
the same maxima, each output's gradient sent to the first of equal maxima in its window
(row by row) and nowhere else, 0 on a dropped odd edge, in the input's memory format."""
import pytest
import torch
import torch.nn.functional as F

from engine.training.layers import MaxPool2x2, _MaxPool2x2

SHAPES = [(2, 3, 8, 6), (3, 5, 7, 9), (2, 3, 31, 31), (1, 2, 2, 3)]
FORMATS = [torch.contiguous_format, torch.channels_last]


def pool_and_grad(pool, x, grad):
    x = x.detach().clone().requires_grad_()
    y = pool(x)
    y.backward(grad)
    return y, x.grad


def tied_input(shape, dtype, memory_format, seed=0):
    """Small integers: most windows hold equal maxima, so tie-breaking is exercised."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 2, shape, generator=g).to(dtype).contiguous(memory_format=memory_format)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_pool_formula_gives_max_pool2d_values_and_gradients_bit_for_bit(shape, memory_format, dtype):
    x = tied_input(shape, dtype, memory_format)
    n, c, h, w = shape
    grad = torch.randn(n, c, h // 2, w // 2, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected_y, expected_grad = pool_and_grad(lambda t: F.max_pool2d(t, 2), x, grad)
    y, grad_in = pool_and_grad(_MaxPool2x2.apply, x, grad)
    assert torch.equal(y, expected_y)
    assert torch.equal(grad_in, expected_grad)
    assert y.is_contiguous(memory_format=memory_format)
    assert grad_in.is_contiguous(memory_format=memory_format)


def test_a_tied_window_sends_its_gradient_to_the_first_maximum_only():
    """Known answers: windows [[1, 1], [1, 1]], [[0, 2], [2, 0]], [[0, 0], [3, 3]] and
    [[0, 0], [0, 4]] send gradients 10, 20, 30, 40 to their positions (0, 0), (0, 1),
    (1, 0) and (1, 1); the odd last row and column of the 5 x 5 input get 0."""
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, :2, :2] = 1
    x[0, 0, :2, 2:4] = torch.tensor([[0., 2.], [2., 0.]])
    x[0, 0, 2:4, :2] = torch.tensor([[0., 0.], [3., 3.]])
    x[0, 0, 2:4, 2:4] = torch.tensor([[0., 0.], [0., 4.]])
    x[0, 0, 4, :] = 9                                          # dropped by the pool
    grad = torch.tensor([[[[10., 20.], [30., 40.]]]])
    y, grad_in = pool_and_grad(_MaxPool2x2.apply, x, grad)
    assert y.tolist() == [[[[1., 2.], [3., 4.]]]]
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 0, 0], expected[0, 0, 0, 3], expected[0, 0, 3, 0], expected[0, 0, 3, 3] = 10, 20, 30, 40
    assert torch.equal(grad_in, expected)


def test_compiled_the_module_runs_the_formula_and_matches_max_pool2d():
    """torch.compile (Inductor, on the CPU) traces the formula, never max_pool2d, and the
    compiled module's values and gradients equal eager max_pool2d's."""
    traced_ops = set()

    def recording_inductor(graph_module, example_inputs):
        for module in graph_module.modules():
            if isinstance(module, torch.fx.GraphModule):
                traced_ops.update(str(node.target) for node in module.graph.nodes)
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(graph_module, example_inputs)

    pool = torch.compile(MaxPool2x2(), backend=recording_inductor, fullgraph=True)
    x = tied_input((2, 3, 11, 11), torch.float32, torch.channels_last)
    grad = torch.randn(2, 3, 5, 5)
    expected_y, expected_grad = pool_and_grad(lambda t: F.max_pool2d(t, 2), x, grad)
    y, grad_in = pool_and_grad(pool, x, grad)
    assert traced_ops, "the recording backend saw no graph"
    assert "autograd_function_apply" in traced_ops, sorted(traced_ops)      # the formula, forward and backward
    assert not [op for op in traced_ops if "max_pool" in op or "boolean_dispatch" in op], sorted(traced_ops)
    assert torch.equal(y, expected_y)
    assert torch.equal(grad_in, expected_grad)
    assert grad_in.is_contiguous(memory_format=torch.channels_last)


def test_eager_the_module_is_max_pool2d():
    x = tied_input((2, 3, 9, 8), torch.float32, torch.channels_last)
    assert torch.equal(MaxPool2x2()(x), F.max_pool2d(x, 2))
