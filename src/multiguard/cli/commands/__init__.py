"""The commands of ``multiguard``: the table :data:`COMMANDS` that the parser is built from, one module per
command (or family) beside it.

A command is one entry of :data:`COMMANDS` (a :class:`~multiguard.common.registry.Registry` of
:class:`~multiguard.cli.console.Command`): its name, its handler, a one-line help, a description and a function
that adds its options (mostly the shared groups of :mod:`multiguard.cli.options`). Registering one makes
``multiguard NAME`` exist. This package imports the library's rooms only inside its handlers, so that
``multiguard --help`` stays quick.
"""

from __future__ import annotations

from multiguard.cli.commands.attack import _attack_options, _cmd_attack
from multiguard.cli.commands.certify import _certify_options, _cmd_certify
from multiguard.cli.commands.datasets import (
    _cmd_datasets_describe,
    _cmd_datasets_download,
    _cmd_datasets_list,
    _cmd_datasets_verify,
    _datasets_describe_options,
    _datasets_download_options,
    _datasets_list_options,
    _datasets_verify_options,
)
from multiguard.cli.commands.demo import _cmd_demo, _demo_options
from multiguard.cli.commands.predict import _cmd_predict, _predict_options
from multiguard.cli.commands.report import _cmd_report, _report_options
from multiguard.cli.commands.serve import _cmd_serve, _serve_options
from multiguard.cli.commands.train import _cmd_train, _cmd_train_denoiser, _train_denoiser_options, _train_options
from multiguard.cli.console import Command, OutputStreamError, echo, fail
from multiguard.cli.options import wrap
from multiguard.common.registry import Registry

__all__ = ["COMMANDS", "Command", "OutputStreamError", "echo", "fail"]


#: The commands of ``multiguard``, in the order ``--help`` lists them.
COMMANDS: Registry[Command, None] = Registry("command")
COMMANDS.register("train", Command(_cmd_train, wrap(
    "Train a base multi-label classifier with Gaussian noise on every batch (ASL loss, Adam), saving a checkpoint "
    "after each epoch."), _train_options), help="train a base classifier on noisy inputs")
COMMANDS.register("train-denoiser", Command(_cmd_train_denoiser, wrap(
    "Train a denoiser that removes Gaussian noise of --sigma from a dataset's images (denoised smoothing): then "
    "`certify --denoiser` puts it in front of a classifier trained on clean images, and the base classifier becomes "
    "classifier(denoiser(x + noise)). Objective mse needs no labels and no classifier; stability makes the frozen "
    "--classifier say on denoised noisy images what it says on clean ones (no labels either). The default recipe, "
    "given --classifier: the unet denoiser, --epochs of mse, then --stability-epochs of stability through the "
    "classifier, in one command; at the end the classifier's top-1 agreement on noisy held-out images is shown "
    "with and without the denoiser. A checkpoint is saved after each epoch."), _train_denoiser_options),
    help="train a denoiser for a classifier trained without noise")
COMMANDS.register("datasets", Command(None, wrap(
    "List the dataset families, describe one dataset's labels, download a dataset into the layout its loader reads, "
    "or verify a dataset folder."),
    subcommands=(
        ("list", "the dataset families", Command(_cmd_datasets_list, "", _datasets_list_options)),
        ("describe", "label statistics of a dataset", Command(_cmd_datasets_describe, wrap(
            "Label counts and frequencies of a dataset's splits, and a check of every image file: it is opened and "
            "decoded, and the sizes and colour modes found are listed with the input size the model will use. "
            "Unreadable images (missing or corrupt) are listed and make the command exit with code 2."),
            _datasets_describe_options)),
        ("download", "fetch a dataset into the layout its loader reads", Command(_cmd_datasets_download, wrap(
            "Fetch and unpack voc2007 or coco2014 into --root, from the URLs of the manifest shipped with multiguard "
            "(official hosts first, then mirrors; --manifest FILE for your own): each file is resumed after an "
            "interruption (HTTP Range), checked against its published size and checksums before it gets its final "
            "name, and unpacked into the exact layout the loaders read. Files already there are left alone. A file "
            "no URL could deliver: one line per URL tried and what to do, exit status 1. nuswide: fetches the ASL "
            "split and says exactly which files to fetch by hand and where to put them, then checks them (exit status "
            "1 until they are there). See docs/datasets.md."), _datasets_download_options)),
        ("verify", "check a dataset folder before training", Command(_cmd_datasets_verify, wrap(
            "Check a dataset folder: every file the loader needs is present and parses, each split's image count "
            "against the official one (VOC 2007 trainval 5,011 and test 4,952; COCO 2014 train 82,783 and val "
            "40,504 images, 82,081 and 40,137 of them labelled; NUS-WIDE: every image its csv lists), every image "
            "opened and decoded, and the label statistics `datasets describe` prints. Each problem is one line "
            "naming the split and the file (missing image, corrupt image, wrong split count); any problem: exit "
            "status 1."), _datasets_verify_options)),
    )), help="list, describe, download and verify datasets")
COMMANDS.register("certify", Command(_cmd_certify, wrap(
    "Draw n noisy samples of each of --num-inputs random inputs (chosen from --seed) and save, for every k' <= "
    "--max-k-prime, how often each label is in the model's top k' (a killed run continues with --resume). Scale "
    "out with torchrun (one GPU per rank) or --shard I/N: the same counts as one process (docs/reproduce.md)."),
    _certify_options),
    help="sample counts into a RUN_DIR (resumable, shardable)")
COMMANDS.register("report", Command(_cmd_report, wrap(
    "Certified top-k precision/recall/F1 curves of MultiGuard, MultiGuard with first terms only, and (where k' = 1) "
    "Jia et al., from the counts of one or more RUN_DIRs. Writes curves.csv, precision.png, recall.png, f1.png, "
    "summary.md and results.json (the curves as data, docs/results.md) into --out; --compare puts results.json files "
    "of several reports in one table.\n\nIn the tables and plots: R is the l2 norm of the perturbation (pixels in "
    "[0, 1]); e is the number of an input's true labels L certified to stay among the k predicted labels under every "
    "perturbation of norm < R; certified precision@R = e/k, recall@R = e/|L|, F1@R = 2e/(|L| + k), averaged over "
    "inputs; 'trivial: by counting alone' is the part that any k of the c labels keep whatever the model (e <= |L| "
    "- (c - k)); 'empirical (attack)' is measured at the inputs a PGD attack found (an upper bound, where "
    "certificates are lower bounds).\n\nThe impact of n from one run: --n 100 200 500 1000 reads each run at those "
    "sample sizes (a run stores its counts after 100, 200, 500, 1000, 2000, 5000, ... samples; each is the fixed-n "
    "experiment on the same samples). A sequential run (certify --stop-at-radius) is reported with anytime-valid "
    "bounds: its curves hold at every radius."), _report_options),
    help="curves, plots and tables from saved runs (no model)")
COMMANDS.register("attack", Command(_cmd_attack, wrap(
    "Attack the smoothed classifier of a checkpoint with l2 PGD in the manner of SmoothAdv (gradients of a soft "
    "top-k' surrogate averaged over --samples noise draws, --steps projected steps) at each radius, then measure "
    "|L ∩ top-k| at the attacked inputs with n fresh samples. Writes ATTACK_DIR/empirical.csv "
    "(radius,precision,recall,f1,num_inputs), per_input.npz and attack.json. The inputs are those of a certify run "
    "with the same --seed and --num-inputs; the certified sizes of the same inputs are computed too, and every input "
    "whose empirical size falls below its certified one is counted (each is a failure of probability at most "
    "alpha)."), _attack_options), help="l2 PGD attack on the smoothed classifier (empirical curves)")
COMMANDS.register("predict", Command(_cmd_predict, wrap(
    "Predict k labels per image with the smoothed classifier and, for each e, the l2 radius below which at least e "
    "of them provably stay predicted."), _predict_options), help="certified labels for image files")
COMMANDS.register("serve", Command(_cmd_serve, wrap(
    "Serve certified predictions over HTTP: POST /v1/predict (the objects `predict --json` prints), the Open "
    "Inference Protocol v2 (/v2/...), a web page at /. The model is loaded once; without a seed each request draws "
    "fresh noise from the operating system's secure randomness. Needs the serve extra (docs/serving.md)."),
    _serve_options), help="certified predictions over HTTP (FastAPI + uvicorn)")
COMMANDS.register("demo", Command(_cmd_demo, wrap(
    "The whole method on a laptop with no network: train small_cnn on multidigits with noise at sigma = 0.25, 0.5 "
    "and 1.0, certify 500 random test inputs of each with n = 1000 for every k' <= 3 (sound noise), attack 16 "
    "inputs of the sigma = 0.5 model, and report MultiGuard vs Jia et al. (k' = 1, k = 3), the k', k, sigma, n and "
    "alpha studies and the attack in figure.png (the paper's Figure 1). About 2 to 4 minutes on 2 CPU cores; "
    "--quick (one model, 100 inputs, a smaller budget, no attack) under a minute. Running it again reuses what is "
    "finished."), _demo_options),
    help="train, certify and report offline on multidigits")
