"""`ranch::candle`: collectives on candle tensors whose backward is the matching collective,
through a real kernel with the candle a session added by `:dep`. Gradients are checked
against finite differences of the global loss (the sum of every rank's loss), on 3 ranks so
nothing leans on a power of two."""
import re

import pytest

from conftest import execute, ok

# One cell, every rank: for each collective, a loss that is not linear in the input, its
# gradient by backward, and central differences of the global loss (all-reduced) obtained by
# perturbing one element on one rank at a time. Returns each check's largest error.
GRADIENT_CHECKS = r'''%%ranch 3
use candle_core::{Device, Tensor, Var};
let (r, n) = (ranch::rank(), ranch::world_size());
let dev = Device::Cpu;
// The local loss of check `which` at this rank's input `x` (4 values).
fn local_loss(which: usize, x: &Tensor, r: usize) -> candle_core::Result<Tensor> {
    let weight = (r + 1) as f64;
    match which {
        0 => ranch::candle::all_reduce_sum(x)?.sqr()?.affine(weight, 0.0)?.sum_all(),
        1 => ranch::candle::broadcast(x, 1)?.sin()?.affine(weight, 0.0)?.sum_all(),
        2 => {
            let y = ranch::candle::all_gather(&x.reshape((2, 2))?, 1)?; // (2, 2n)
            let pos = Tensor::arange(0f64, y.elem_count() as f64, x.device())?.reshape(y.shape())?;
            (y.sqr()? * (pos + r as f64)?)?.sum_all()
        }
        _ => (ranch::candle::replicate(x)?.exp()? * weight)?.sum_all(),
    }
}
let global = |which: usize, x: &Tensor| -> candle_core::Result<f64> {
    let mut l = [local_loss(which, x, r)?.to_scalar::<f64>()?];
    ranch::comm().all_reduce(&mut l, ranch::Op::Sum).map_err(candle_core::Error::wrap)?;
    Ok(l[0])
};
let mut report = vec![];
for which in 0..4 {
    // replicate's values are the same on every rank; the others' differ by rank.
    let base: Vec<f64> = (0..4).map(|i| 0.3 + 0.1 * (i + if which == 3 { 0 } else { 4 * r }) as f64).collect();
    let x = Var::from_vec(base.clone(), 4, &dev)?;
    let grads = local_loss(which, x.as_tensor(), r)?.backward()?;
    let mine = grads.get(x.as_tensor()).map(|g| g.to_vec1::<f64>()).transpose()?.unwrap_or(vec![0.0; 4]);
    let every: Vec<Vec<f64>> = ranch::comm().all_gather(&mine)?;
    let h = 1e-5;
    let mut worst = 0f64;
    // replicate: one shared value per element, so all ranks move it together.
    let movers: Vec<Option<usize>> = if which == 3 { vec![None] } else { (0..n).map(Some).collect() };
    for q in movers {
        for i in 0..4 {
            let at = |d: f64| -> candle_core::Result<f64> {
                let mut v = base.clone();
                if q.is_none() || q == Some(r) { v[i] += d; }
                global(which, &Tensor::from_vec(v, 4, &dev)?)
            };
            let numeric = (at(h)? - at(-h)?) / (2.0 * h);
            let analytic = every[q.unwrap_or(0)][i];
            worst = worst.max((numeric - analytic).abs() / numeric.abs().max(1.0));
        }
    }
    report.push(format!("{which}:{worst:.1e}"));
}
report.join(" ")'''


@pytest.fixture(scope="module")
def candle(kernel):
    ok(execute(kernel, ':dep candle-core = { version = "0.11" }', timeout=900))
    return kernel


def test_backward_of_each_collective_is_the_gradient_of_the_sum_of_the_ranks_losses(candle):
    run = ok(execute(candle, GRADIENT_CHECKS, timeout=900))
    reports = re.findall(r'"([^"]*)"', run.result())
    assert len(reports) == 3, run.result()
    for report in reports:
        errors = dict(part.split(":") for part in report.split())
        assert set(errors) == {"0", "1", "2", "3"}, report
        # Central differences in f64 with h = 1e-5 agree to ~1e-9; a wrong backward (no
        # collective, the wrong root, the wrong slice) is off by O(1).
        assert all(float(e) < 1e-6 for e in errors.values()), report


def test_forward_values_and_shapes(candle):
    run = ok(execute(candle, r'''%%ranch 2
use candle_core::{Device, Tensor};
let r = ranch::rank() as f32;
let x = Tensor::new(&[[r, r + 10.0]], &Device::Cpu)?; // (1, 2)
let sum = ranch::candle::all_reduce_sum(&x)?.to_vec2::<f32>()?;
let root = ranch::candle::broadcast(&x, 1)?.to_vec2::<f32>()?;
let rows = ranch::candle::all_gather(&x, 0)?.to_vec2::<f32>()?;
let cols = ranch::candle::all_gather(&x, 1)?.to_vec2::<f32>()?;
format!("{sum:?} {root:?} {rows:?} {cols:?}")''', timeout=600))
    expected = '[[1.0, 21.0]] [[1.0, 11.0]] [[0.0, 10.0], [1.0, 11.0]] [[0.0, 10.0, 1.0, 11.0]]'
    assert run.result() == f'["{expected}", "{expected}"]', run.result()


def test_ranks_that_disagree_on_shape_or_pass_an_unsupported_type_get_a_clear_error(candle):
    run = execute(candle, r'''%%ranch 2
use candle_core::{Device, Tensor};
let shape = if ranch::rank() == 0 { (2, 3) } else { (3, 2) };
ranch::candle::all_reduce_sum(&Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu)?)?;''', timeout=600)
    text = run.error_text()
    assert "different shapes" in text and "rank 0: [2, 3]" in text and "rank 1: [3, 2]" in text, text
    run = execute(candle, r'''%%ranch 1
let x = candle_core::Tensor::zeros(3, candle_core::DType::U32, &candle_core::Device::Cpu)?;
ranch::candle::all_reduce_sum(&x)?;''', timeout=600)
    text = run.error_text()
    assert "U32 tensors are not supported" in text and "to_dtype" in text, text
    run = execute(candle, "%%ranch 2\n"
                          "ranch::candle::broadcast(&candle_core::Tensor::new(&[1f32], &candle_core::Device::Cpu)?, 5)?;", timeout=600)
    assert "root 5 is not a rank of this group of 2" in run.error_text(), run.error_text()


def test_session_fns_and_plain_cells_can_name_ranch_candle_once_the_session_has_candle(candle):
    # The session's own runtime got `candle` with the `:dep`: a fn defined in a plain cell
    # compiles, runs alone as a world of one, and runs data-parallel through `%in_ddp`.
    ok(execute(candle, r'''fn summed_grad(x: f64) -> candle_core::Result<f64> {
    let v = candle_core::Var::new(&[x], &candle_core::Device::Cpu)?;
    let loss = ranch::candle::replicate(v.as_tensor())?.sqr()?.sum_all()?;
    Ok(loss.backward()?.get(v.as_tensor()).unwrap().to_vec1::<f64>()?[0])
}''', timeout=600))
    assert ok(execute(candle, "summed_grad(3.0).unwrap()")).result() == "6.0"
    run = ok(execute(candle, "%in_ddp --gather 4 summed_grad(3.0).unwrap()", timeout=600))
    assert run.result() == "[24.0, 24.0, 24.0, 24.0]", run.result()


def test_pool_cells_can_name_ranch_candle(candle):
    ok(execute(candle, "%ranch_start 2", timeout=600))
    try:
        run = ok(execute(candle, "%%px\nlet t = candle_core::Tensor::new(&[ranch::rank() as f32 + 1.0], &candle_core::Device::Cpu).unwrap();\n"
                                 "ranch::candle::all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap()[0]", timeout=900))
        assert "3.0" in run.result() and "1.0" not in run.result(), run.result()
    finally:
        execute(candle, "%ranch_stop", timeout=120)


def test_ranks_that_disagree_on_tracking_gradients_are_told_before_any_backward_waits(candle):
    run = execute(candle, r'''%%ranch 2
use candle_core::{Device, Tensor, Var};
let x = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
let x = if ranch::rank() == 0 { Var::from_tensor(&x)?.as_tensor().clone() } else { x };
ranch::candle::broadcast(&x, 0)?;''', timeout=600)
    text = run.error_text()
    assert "tracks gradients on ranks 0 only" in text, text
