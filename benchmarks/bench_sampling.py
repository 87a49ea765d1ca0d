"""Throughput of the sampling engine against a bare loop and a loop written like the paper's code.

    .venv/bin/python benchmarks/bench_sampling.py            # small CNN and MLP; ResNet-50 too where CUDA exists

Three ways to get top-k' counts of n noisy copies of each input, timed in the same process, in interleaved
rounds (the best round of each counts, so background load hurts all three alike):

(a) engine   ``MultiGuard.sample_counts``: block-seeded noise drawn on the device, inputs packed into
             forward batches, stable-sort top-k', bincount on the device, one host transfer per input.
(b) bare     the floor: ``model(x + sigma * randn(batch))`` and ``topk`` per batch, nothing counted.
(c) paper    noise made on the CPU and moved to the device, ``x.repeat``, one-hot rows summed and copied
             to the host every batch; every k' needs its own run.

Goal: (a) within 5 % of (b) and faster than (c). Samples/s and ratios are printed; figures go in README.md.

Noise (``--section noise``): the demo's small_cnn on 8-bit 1x32x32 inputs, the engine with float noise and with
sound noise (the rounded Gaussian on the 1/255 grid, :mod:`multiguard.sampling.sound_noise`), each with and
without shared noise, against the model's own forward on a ready batch (no noise, nothing counted), eager and
compiled, in interleaved rounds; and the noise draw alone (one 100-sample block: ``normal_`` against the table
draw). Goals (issue 28): sound at most 1.1x float per sample, the engine with shared noise at >= 90 % of the
compiled forward.

Modes (``--section modes``): the demo's model (``create_model("small_cnn")`` on 1x32x32 multidigits, 10
labels) sampled by the engine in every mode of :mod:`multiguard.sampling.acceleration` (fp32, channels_last, bf16,
bf16 + channels_last, fp16, and compiled variants) against the fp32 bare loop, plus bare loops in bf16 and
compiled, all in interleaved rounds in the same process. A 2048 x 2048 GEMM in fp32 and in bf16 measures
the machine's peak in the same run, and each figure is printed also as GFLOP/s and as a fraction of both
peaks (FLOPs per sample counted by ``torch.utils.flop_counter``). Compile times are printed separately.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable

import numpy as np
import torch

from multiguard import MultiGuard
from multiguard.sampling.acceleration import has_native_bf16

SIGMA = 0.5


def small_cnn(num_classes: int = 20) -> torch.nn.Module:
    """The demo's light CNN: three stride-2 3x3 convolutions (32-64-128), BatchNorm, global pooling."""
    layers: list[torch.nn.Module] = []
    channels = 3
    for width in (32, 64, 128):
        layers += [torch.nn.Conv2d(channels, width, 3, stride=2, padding=1), torch.nn.BatchNorm2d(width)]
        layers.append(torch.nn.ReLU(inplace=True))
        channels = width
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, num_classes)]
    return torch.nn.Sequential(*layers)


def mlp(in_features: int = 784, num_classes: int = 20) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(in_features, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, num_classes),
    )


def engine(guard: MultiGuard, x: torch.Tensor, n: int, batch_size: int, max_k_prime: int | None = None) -> None:
    guard.sample_counts(x, n=n, seed=0, batch_size=batch_size, max_k_prime=max_k_prime)


def bare(
    model: torch.nn.Module, x: torch.Tensor, n: int, batch_size: int, k_prime: int, channels_last: bool = False
) -> None:
    with torch.inference_mode():
        for row in x:
            for start in range(0, n, batch_size):
                size = min(batch_size, n - start)
                noise = torch.randn((size, *row.shape), device=row.device, dtype=row.dtype)
                batch = row + SIGMA * noise
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                torch.topk(model(batch), k_prime, dim=1)
        if x.device.type == "cuda":
            torch.cuda.synchronize()


def paper(model: torch.nn.Module, x: torch.Tensor, n: int, batch_size: int, k_prime: int) -> np.ndarray:
    counts = np.zeros((x.shape[0], model_width(model, x)), dtype=np.int64)
    with torch.no_grad():
        for i, row in enumerate(x):
            remaining = n
            while remaining > 0:
                size = min(batch_size, remaining)
                remaining -= size
                batch = row.repeat((size,) + (1,) * row.ndim)
                noise = torch.randn_like(batch, device="cpu").to(row.device) * SIGMA
                top = model(batch + noise).topk(k_prime, dim=1).indices
                one_hot = torch.zeros(size, counts.shape[1], device=row.device).scatter_(1, top, 1.0)
                counts[i] += one_hot.sum(dim=0).long().cpu().numpy()
    return counts


_WIDTHS: dict[int, int] = {}


def model_width(model: torch.nn.Module, x: torch.Tensor) -> int:
    if id(model) not in _WIDTHS:
        with torch.no_grad():
            _WIDTHS[id(model)] = model(x[:1]).shape[1]
    return _WIDTHS[id(model)]


def best_times(
    methods: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, tuple[float, float]]:
    """Best wall time and best process CPU time of each method over interleaved, rotated rounds.

    One warm-up call each first. On a shared CPU machine the CPU time (with --threads 1) is the steadier
    figure: it does not count the time other jobs hold the cores.
    """
    for run in methods.values():
        run()
    best = {name: (float("inf"), float("inf")) for name in methods}
    names = list(methods)
    for round_number in range(rounds):
        shift = round_number % len(names)  # rotate the order so that no method always runs first
        for name in names[shift:] + names[:shift]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            methods[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def compare(title: str, model: torch.nn.Module, x: torch.Tensor, n: int, batch_size: int, rounds: int) -> None:
    model.eval()
    device = x.device
    guard = MultiGuard(model, num_classes=model_width(model, x), sigma=SIGMA)
    samples = x.shape[0] * n
    methods: dict[str, Callable[[], object]] = {
        "(a) engine": lambda: engine(guard, x, n, batch_size),
        "(b) bare": lambda: bare(model, x, n, batch_size, 1),
        "(c) paper": lambda: paper(model, x, n, batch_size, 1),
        "(a) engine, k'=1..3 in one pass": lambda: engine(guard, x, n, batch_size, max_k_prime=3),
        "(c) paper, k'=1,2,3 in 3 runs": lambda: [paper(model, x, n, batch_size, j) for j in (1, 2, 3)],
    }
    times = best_times(methods, rounds, device)
    print(f"\n{title}: {x.shape[0]} inputs x n = {n}, batch {batch_size}, {device}, best of {rounds} rounds")
    print(f"  {'':34s} {'wall':>18s}   {'CPU time':>18s}")
    for name, (wall, cpu) in times.items():
        print(f"  {name:34s} {samples / wall:10,.0f} samples/s   {samples / cpu:10,.0f} samples/s")
    for clock, column in (("wall", 0), ("CPU time", 1)):
        a, b, c = (times[name][column] for name in ("(a) engine", "(b) bare", "(c) paper"))
        k3 = times["(c) paper, k'=1,2,3 in 3 runs"][column] / times["(a) engine, k'=1..3 in one pass"][column]
        print(
            f"  {clock:8s} engine/bare {b / a:.3f} (overhead {100 * (a / b - 1):+.1f} %), engine/paper {c / a:.3f},"
            f" k'=1..3 one pass vs three runs {k3:.2f}x"
        )


def resnet50(n: int, batch_size: int, rounds: int) -> None:
    import torchvision

    device = torch.device("cuda")
    print(f"\nResNet-50 (torchvision, random weights, 80 labels), 224x224, {torch.cuda.get_device_name()}")
    x = torch.rand(4, 3, 224, 224, device=device)
    for label, dtype, channels_last in (("fp32", None, False), ("bf16 + channels_last", torch.bfloat16, True)):
        model = torchvision.models.resnet50(weights=None, num_classes=80).to(device).eval()
        guard = MultiGuard(model, num_classes=80, sigma=SIGMA, precision="fp32" if dtype is None else "bf16",
                           channels_last=channels_last)

        def run_bare(
            model: torch.nn.Module = model, dtype: torch.dtype | None = dtype, cl: bool = channels_last
        ) -> None:
            with torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext():
                bare(model, x, n, batch_size, 1, channels_last=cl)

        times = best_times(
            {"engine": lambda guard=guard: engine(guard, x, n, batch_size), "bare": run_bare}, rounds, device
        )
        samples = x.shape[0] * n
        engine_s, bare_s = times["engine"][0], times["bare"][0]
        print(
            f"  {label:22s} engine {samples / engine_s:9,.0f} samples/s   bare {samples / bare_s:9,.0f}"
            f" samples/s   engine/bare {bare_s / engine_s:.3f}"
        )


# ---------------------------------------------------------------------------------------------------- modes


def gemm_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 3, rounds: int = 3) -> float:
    """Best GFLOP/s of ``repeats`` back-to-back ``size x size`` matmuls in ``dtype``, over ``rounds``.

    Timed like the models (:func:`clock`): process CPU time on the CPU, wall time on CUDA.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock(device)
        for _ in range(repeats):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock(device) - start)
    return 2 * size**3 * repeats / best / 1e9


def clock(device: torch.device) -> float:
    """The clock the modes section uses: process CPU time on the CPU (steady on a shared machine; with
    ``--threads 1`` it is one core's work), wall time on CUDA."""
    return time.process_time() if device.type == "cpu" else time.perf_counter()


def flops_per_sample(model: torch.nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward of one input (convolutions and matmuls; ``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(example[:1])
    return counter.get_total_flops()


def bare_loop(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int, batch_size: int,
    dtype: torch.dtype | None, channels_last: bool,
) -> Callable[[], None]:
    """The bare loop (b) in a mode: autocast with ``dtype`` (or none) and channels_last batches."""
    def run() -> None:
        with torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            bare(model, x, n, batch_size, 1, channels_last=channels_last)
    return run


MODES = [  # label, precision, channels_last, compile
    ("fp32", "fp32", False, False),
    ("channels_last", "fp32", True, False),
    ("bf16", "bf16", False, False),
    ("bf16 + channels_last", "bf16", True, False),
    ("fp16", "fp16", False, False),
    ("fp32 + compile", "fp32", False, True),
    ("bf16 + channels_last + compile", "bf16", True, True),
]


def modes(n: int, batch_size: int, rounds: int, num_inputs: int, compile_modes: bool) -> None:
    """The demo's CNN in every sampling mode against the fp32 bare loop, each as a fraction of GEMM peak."""
    from multiguard.models.factory import create_model
    from multiguard.sampling.acceleration import CompiledModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    base = create_model("small_cnn", num_classes=10, image_size=32, in_channels=1).to(device).eval()
    x = torch.rand(num_inputs, 1, 32, 32, device=device)
    flops = flops_per_sample(base, x)
    peak = {"fp32": gemm_peak(torch.float32, device), "bf16": gemm_peak(torch.bfloat16, device)}
    clock_name = "CPU time" if device.type == "cpu" else "wall time"
    print(f"\nModes: the demo's small_cnn (1x32x32, 10 labels, {flops / 1e6:.2f} MFLOP per sample), "
          f"{num_inputs} inputs x n = {n}, batch {batch_size}, {device}, best of {rounds} rounds, by {clock_name}")
    print(f"  native bf16 on this device: {has_native_bf16(device)}; 2048^3 GEMM peak by {clock_name}: "
          f"fp32 {peak['fp32']:,.0f} GFLOP/s, bf16 {peak['bf16']:,.0f} GFLOP/s")

    methods: dict[str, Callable[[], object]] = {}
    compile_seconds: dict[str, str] = {}
    for label, precision, channels_last, compile_model in MODES:
        if compile_model and not compile_modes:
            continue
        guard = MultiGuard(copy.deepcopy(base), num_classes=10, sigma=SIGMA, precision=precision,
                           channels_last=channels_last, compile=compile_model)
        if compile_model:  # compile before timing; the time is reported apart
            guard.warm_up(x, batch_size=batch_size)
            compile_seconds[f"engine {label}"] = (
                f"{guard.compile_seconds:.1f} s" if guard.compile_seconds is not None
                else f"failed, runs eagerly: {guard.compile_fallback}"
            )
        methods[f"engine {label}"] = lambda guard=guard: engine(guard, x, n, batch_size)

    methods["bare fp32 (baseline)"] = bare_loop(base, x, n, batch_size, None, False)
    channels_last_model = copy.deepcopy(base).to(memory_format=torch.channels_last)
    methods["bare bf16 + channels_last"] = bare_loop(channels_last_model, x, n, batch_size, torch.bfloat16, True)
    if compile_modes:
        for label, dtype, channels_last in (("fp32", None, False), ("bf16 + channels_last", torch.bfloat16, True)):
            model = copy.deepcopy(base)
            if channels_last:
                model.to(memory_format=torch.channels_last)
            compiled = CompiledModel(model)
            run = bare_loop(compiled, x, n, batch_size, dtype, channels_last)
            run()  # compiles at the first batch
            compile_seconds[f"bare {label} + compile"] = (
                f"{compiled.compile_seconds:.1f} s" if compiled.compile_seconds is not None
                else f"failed, runs eagerly: {compiled.fallback_reason}"
            )
            methods[f"bare {label} + compile"] = run

    times = best_times(methods, rounds, device)
    samples = x.shape[0] * n
    column = 1 if device.type == "cpu" else 0
    baseline = times["bare fp32 (baseline)"][column]
    print(f"  {'':38s} {'wall /s':>9s} {clock_name + ' /s':>13s} {'vs bare fp32':>12s} {'GFLOP/s':>8s}"
          f" {'of fp32 peak':>12s} {'of bf16 peak':>12s}")
    for name, measured in times.items():
        rate = samples / measured[column]
        gflops = rate * flops / 1e9
        print(f"  {name:38s} {samples / measured[0]:9,.0f} {rate:13,.0f} {baseline / measured[column]:11.2f}x"
              f" {gflops:8.1f} {100 * gflops / peak['fp32']:11.1f}% {100 * gflops / peak['bf16']:11.1f}%")
    for label, text in compile_seconds.items():
        print(f"  compile time, {label}: {text} (first batch included; not in the figures above)")


def _forward_only(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int,
                  batch_size: int) -> Callable[[], None]:
    """The model's own forward on ready batches of the inputs' size: the ceiling of any sampler."""
    batch = x[:1].expand(batch_size, *x.shape[1:]).contiguous()

    def run() -> None:
        with torch.inference_mode():
            for _ in range(x.shape[0]):
                for start in range(0, n, batch_size):
                    model(batch[: min(batch_size, n - start)])
    return run


def _noise_draw(noise: object, shape: tuple[int, ...], dtype: torch.dtype, rounds: int) -> float:
    """Best seconds per sample of drawing one NOISE_BLOCK of noise of ``shape`` (per sample)."""
    from multiguard.common.seeds import NOISE_BLOCK

    block = torch.empty((NOISE_BLOCK, *shape), dtype=dtype)
    generator = torch.Generator()
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for b in range(50):
            generator.manual_seed(b)
            noise.draw(block, generator)
        best = min(best, (time.process_time() - start) / (50 * NOISE_BLOCK))
    return best


def noise_section(n: int, batch_size: int, rounds: int, num_inputs: int, compile_model: bool) -> None:
    """Sound vs float noise and shared noise on the demo's CNN (see the module docstring)."""
    from multiguard.models.factory import create_model
    from multiguard.sampling.acceleration import CompiledModel
    from multiguard.sampling.noise import FloatNoise, SoundNoise

    torch.manual_seed(0)
    base = create_model("small_cnn", num_classes=10, image_size=32, in_channels=1).eval()
    x = torch.randint(0, 256, (num_inputs, 1, 32, 32)).float() / 255
    float_draw = _noise_draw(FloatNoise(SIGMA), (1, 32, 32), torch.float32, rounds)
    sound_draw = _noise_draw(SoundNoise(SIGMA), (1, 32, 32), torch.int32, rounds)
    print(f"\nNoise: the demo's small_cnn (1x32x32, 10 labels), {num_inputs} grid inputs x n = {n}, batch "
          f"{batch_size}, sigma = {SIGMA}, CPU time, best of {rounds} rounds")
    print(f"  noise draw alone, per sample: float {1e6 * float_draw:.2f} us, sound {1e6 * sound_draw:.2f} us "
          f"(sound / float {sound_draw / float_draw:.2f}x)")
    methods: dict[str, Callable[[], object]] = {"forward only (eager)": _forward_only(base, x, n, batch_size)}
    compiled = [False, True] if compile_model else [False]
    for compiled_model in compiled:
        tag = " + compile" if compiled_model else ""
        if compiled_model:
            forward = CompiledModel(copy.deepcopy(base))
            methods["forward only (compiled)"] = _forward_only(forward, x, n, batch_size)
        for noise in ("float", "sound"):
            for shared in (False, True):
                guard = MultiGuard(copy.deepcopy(base), num_classes=10, sigma=SIGMA, clamp=(0.0, 1.0), noise=noise,
                                   shared_noise=shared, compile=compiled_model)
                if compiled_model:
                    guard.warm_up(x, batch_size=batch_size)
                name = f"engine {noise}{' shared' if shared else ''}{tag}"
                methods[name] = lambda guard=guard: engine(guard, x, n, batch_size)
    times = best_times(methods, rounds, torch.device("cpu"))
    samples = x.shape[0] * n
    for name, (_, cpu) in times.items():
        print(f"  {name:32s} {samples / cpu:9,.0f} samples/s (CPU)")
    for tag in [""] + ([" + compile"] if compile_model else []):
        flo, snd = times[f"engine float{tag}"][1], times[f"engine sound{tag}"][1]
        flo_s, snd_s = times[f"engine float shared{tag}"][1], times[f"engine sound shared{tag}"][1]
        forward = times["forward only (compiled)" if tag else "forward only (eager)"][1]
        print(f"  engine{tag}: sound / float time per sample {snd / flo:.2f}x; shared: sound / float "
              f"{snd_s / flo_s:.2f}x; engine / forward-only rate: float {forward / flo:.0%}, float shared "
              f"{forward / flo_s:.0%}, sound {forward / snd:.0%}, sound shared {forward / snd_s:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cnn-inputs", type=int, default=8)
    parser.add_argument("--mlp-inputs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--section", choices=("all", "engine", "modes", "noise"), default="all",
                        help="engine: (a)/(b)/(c) above; modes: precision, channels_last, compile vs GEMM peak")
    parser.add_argument("--modes-inputs", type=int, default=8, help="inputs in the modes section")
    parser.add_argument("--no-compile", action="store_true", help="modes section without the compiled variants")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}")
    if args.section in ("all", "noise"):
        noise_section(args.n, args.batch_size, args.rounds, args.modes_inputs, not args.no_compile)
    if args.section == "noise":
        return
    if args.section in ("all", "modes"):
        modes(args.n, args.batch_size, args.rounds, args.modes_inputs, not args.no_compile)
    if args.section == "modes":
        return
    cnn_x = torch.rand(args.cnn_inputs, 3, 32, 32, device=device)
    compare("small CNN, 3x32x32", small_cnn().to(device), cnn_x, args.n, args.batch_size, args.rounds)
    mlp_x = torch.rand(args.mlp_inputs, 784, device=device)
    compare("MLP 784-512-512-20", mlp().to(device), mlp_x, args.n, args.batch_size, args.rounds)
    if device.type == "cuda":
        resnet50(args.n, min(args.batch_size, 250), args.rounds)
    else:
        print("\nResNet-50 at 224x224 (fp32, bf16 + channels_last): skipped, CUDA is not available")


if __name__ == "__main__":
    main()
