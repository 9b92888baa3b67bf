"""Helpers shared by tests/test_kernels_*.py.

Tolerances, written down once:
  TOL[dtype] = (atol, rtol) for elementwise outputs, Triton against the eager twin.
  REDUCE_TOL[dtype] = bound on ||a - b|| / ||b|| for reduced outputs (per-channel or
      per-sample sums, weight gradients), whose elements can cancel to near zero
      (float32; in half precision a reduced output is judged against float64 alone).
  HALF_FACTOR: in float16 / bfloat16 the Triton result's error against a float64
      reference may be at most HALF_FACTOR x the eager twin's own error (+ HALF_FLOOR).
  U32: float32's unit roundoff. Where a test derives what float32 can promise for an
      operation (its `float32_bounds`, a rounding-error analysis of the operation), its
      float32 results are held to that bound, element by element, instead of TOL and
      REDUCE_TOL: a fixed tolerance cannot follow cancellation (a sum far smaller than
      its terms), which no float32 code avoids.
"""
import pytest
import torch

from kernels import _common as cm

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}
REDUCE_TOL = {torch.float32: 1e-5}
HALF_FACTOR = 2.0
HALF_FLOOR = 1e-6
U32 = 2.0 ** -24


@pytest.fixture(autouse=True)
def poisoned_kernel_outputs():
    """Every kernel test (imported into its module): NaN-filled outputs and scratch
    buffers, so that an element a kernel never writes fails the comparison. (The
    random inputs are seeded by tests/conftest.py, from the test's name.)"""
    with cm.poisoned_outputs():
        yield


def make(shape, dtype, channels_last=False, scale=1.0, shift=0.0, requires_grad=True):
    t = torch.randn(shape, device=DEVICE) * scale + shift
    t = t.to(dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def uniform(shape, low, high, dtype):
    """Values drawn evenly from [low, high) in float64, then rounded to dtype."""
    return (torch.rand(shape, device=DEVICE, dtype=torch.float64) * (high - low) + low).to(dtype)


def run(fn, inputs, grad_out):
    """(output, gradients of every input that requires grad) for one backend."""
    out = fn(*inputs)
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, diff, grad_out)
    return out.detach(), list(grads)


def as_f64(inputs):
    return [t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
            for t in inputs]


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_finite(t, what):
    assert torch.isfinite(t).all(), f"{what}: non-finite values (an element left unwritten?)"


def assert_elementwise(a, b, dtype, what):
    assert_finite(a, what)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def assert_reduced(a, b, dtype, what):
    """Relative norm error within REDUCE_TOL[dtype]."""
    assert_finite(a, what)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    err, tol = rel_err(a, b), REDUCE_TOL[dtype]
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


def assert_half_precision(tri, eager, ref64, what):
    """Triton's low-precision error against float64 stays within HALF_FACTOR x eager's."""
    e_tri, e_eager = rel_err(tri, ref64), rel_err(eager, ref64)
    assert e_tri <= HALF_FACTOR * e_eager + HALF_FLOOR, (
        f"{what}: triton error {e_tri:.3g} vs float64 exceeds {HALF_FACTOR} x eager's {e_eager:.3g}")


def assert_within_bound(a, ref, bound, what):
    """|a - ref| <= bound, element by element (ref and bound in float64)."""
    assert_finite(a, what)
    excess = (a.double() - ref).abs() - bound
    worst = int(excess.argmax())
    if excess.flatten()[worst] > 0:
        err, allowed = (a.double() - ref).abs().flatten()[worst], bound.flatten()[worst]
        raise AssertionError(f"{what}: element {worst} is off by {err:.3g} from float64, beyond the "
                             f"float32 bound {allowed:.3g} (value {ref.flatten()[worst]:.6g})")


def check_float32_bounds(results_t, results_e, twin, inputs, grad_out, float32_bounds, names, what):
    """Triton's and the eager twin's float32 results, each within U32 x its derived
    bound of the float64 twin. The eager twin is checked too: it proves the bound
    (a first-order error analysis written in the test) covers real float32 code."""
    out_r, grads_r = run(twin, as_f64(inputs), grad_out.double())
    exact = [t.detach().double() if isinstance(t, torch.Tensor) else t for t in inputs]
    bounds = float32_bounds(*exact, grad_out.double())
    for a, b, r, e, name in zip(results_t, results_e, [out_r] + grads_r, bounds, names):
        assert_within_bound(a, r, U32 * e, f"{what} {name} (triton)")
        assert_within_bound(b, r, U32 * e, f"{what} {name} (eager twin: the test's error analysis misses "
                                           f"a rounding if only this fails)")


def check_against_eager(fn, twin, inputs, grad_out, dtype, reduced=(), what="", float32_bounds=None):
    """Runs `fn(*inputs, backend=...)` both ways and compares output and every gradient.

    reduced: positions (0 = output, 1.. = gradients in input order) compared by
    relative norm instead of elementwise. In half precision each result is also
    compared with `twin` (the eager twin) run on float64 copies: Triton's error may be
    at most HALF_FACTOR x eager's own. That is the only test of a reduced result in
    half precision: eager rounds after every step, and sums such as dh = dz2 @ w2
    cancel, so eager alone can be off by more than 100% (squeeze_excite (1, 20, 1, 1, 1)
    in bfloat16, seed 4228798277), and Triton's distance to such a result says nothing
    that its distance to float64 does not (it is at most their two errors' sum).
    float32_bounds: for float32, a function of the float64 inputs and grad_out giving,
    for every result, E >= 0 of its shape such that any float32 evaluation lies within
    U32 x E of the exact value; then both backends are checked against float64 within
    that bound (check_float32_bounds) in place of TOL and REDUCE_TOL.
    """
    out_t, grads_t = run(lambda *a: fn(*a, backend="triton"), inputs, grad_out)
    out_e, grads_e = run(lambda *a: fn(*a, backend="eager"), inputs, grad_out)
    results_t, results_e = [out_t] + grads_t, [out_e] + grads_e
    names = ["output"] + [f"grad of input {i}" for i in range(len(grads_t))]
    derived = dtype == torch.float32 and float32_bounds is not None
    if dtype != torch.float32:
        out_r, grads_r = run(twin, as_f64(inputs), grad_out.double())
        for a, b, r, name in zip(results_t, results_e, [out_r] + grads_r, names):
            assert_finite(a, f"{what} {name}")
            assert_half_precision(a, b, r, f"{what} {name}")
    for i, (a, b, name) in enumerate(zip(results_t, results_e, names)):
        assert a.dtype == b.dtype, f"{what} {name}: dtype {a.dtype} vs eager {b.dtype}"
        assert a.shape == b.shape, f"{what} {name}: shape {tuple(a.shape)} vs eager {tuple(b.shape)}"
        if derived:
            continue
        if i in reduced:
            if dtype == torch.float32:
                assert_reduced(a, b, dtype, f"{what} {name}")
        else:
            assert_elementwise(a, b, dtype, f"{what} {name}")
    if derived:
        check_float32_bounds(results_t, results_e, twin, inputs, grad_out, float32_bounds, names, what)
    return results_t


def half_neighbours(r):
    """The representable values next below and above each element of the float16 or
    bfloat16 tensor `r`, in float64 (from its bits: one unit in the last place)."""
    bits = r.view(torch.int16).to(torch.int32)
    magnitude, negative = bits & 0x7FFF, bits < 0
    toward_zero = torch.where(magnitude == 0, bits, bits - 1)       # (no value below 0 in magnitude)
    away = bits + 1
    step = lambda b: b.to(torch.int16).view(r.dtype).double()      # noqa: E731
    smallest = torch.tensor(1, dtype=torch.int16).view(r.dtype).double()
    below = torch.where(negative, step(away), torch.where(magnitude == 0, -smallest, step(toward_zero)))
    above = torch.where(negative, torch.where(magnitude == 0, smallest, step(toward_zero)), step(away))
    return below, above


def assert_rounded_once(out, exact, bound, what, least=0.9):
    """A half-precision kernel result that computes in float32 and rounds once, at its
    store, equals the exact value rounded to its dtype wherever that answer is known:
    where the exact value (float64) +- `bound` (what float32 arithmetic can move it,
    float64, absolute) stays between the two midpoints around its rounded value. At least
    `least` of the elements must be so decided (else the inputs prove little). A loose
    tolerance absorbs an extra rounding of an intermediate (a half-precision copy of a
    float32 value); this does not: such a rounding moves the result by up to half a unit
    of the intermediate, and turns a share of the decided elements to a neighbour."""
    assert_finite(out, what)
    exact, bound = exact.double(), bound.double().expand_as(exact)
    rounded = exact.to(out.dtype)
    below, above = half_neighbours(rounded)
    r = rounded.double()
    decided = (exact - bound > (r + below) / 2) & (exact + bound < (r + above) / 2)
    share = float(decided.double().mean())
    assert share >= least, f"{what}: only {share:.0%} of the elements have a known rounded answer"
    wrong = decided & (out.double() != r)
    if wrong.any():
        worst = int(wrong.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(wrong.sum())} of {int(decided.sum())} elements with a known answer are not the exact "
            f"value rounded once to {out.dtype} (e.g. element {worst}: {out.flatten()[worst].item():.8g}, exact "
            f"{exact.flatten()[worst].item():.8g}, rounded once {r.flatten()[worst].item():.8g}): "
            f"an extra rounding inside the kernel?")
