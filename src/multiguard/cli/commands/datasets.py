"""``multiguard datasets list|describe|download|verify``: the dataset families, label statistics,
downloads and folder checks.

Each handler parses nothing, calls the library and prints; ``*_options`` adds the command's options."""

from __future__ import annotations

import argparse
import json
import sys

from multiguard.cli.console import echo, fail
from multiguard.cli.options import (
    EXIT_FAILURE,
    add_dataset_folder,
    dataset_options,
)


def _cmd_datasets_list(args: argparse.Namespace) -> int:
    from multiguard.data import DATASETS

    if args.json:
        echo(json.dumps({name: {"description": info.description, "train_split": info.train_split,
                                 "test_split": info.test_split, "image_size": info.image_size,
                                 "needs_root": info.needs_root, "options": list(info.options)}
                          for name, info in DATASETS.items()}, indent=2))
        return 0
    width = max(len(name) for name in DATASETS)
    for name, info in DATASETS.items():
        echo(f"{name.ljust(width)}  {info.description} (splits {info.train_split}/{info.test_split})")
    return 0


def _cmd_datasets_describe(args: argparse.Namespace) -> int:
    from multiguard.data import default_splits, describe, format_description, get_dataset

    splits = args.split or list(dict.fromkeys(default_splits(args.dataset)))
    options = dataset_options(args.dataset_option)
    descriptions = [
        describe(get_dataset(args.dataset, root=args.data_root, split=split, image_size=args.image_size,
                             seed=args.seed, **options), check_images=not args.labels_only)
        for split in splits
    ]
    if args.json:
        echo(json.dumps(descriptions[0] if len(descriptions) == 1 else descriptions, indent=2))
    else:
        echo(format_description(descriptions))
    unreadable = sum(len(d.get("unreadable_images", ())) for d in descriptions)
    if unreadable:
        return fail(f"{unreadable} image file{'s' if unreadable > 1 else ''} cannot be read (listed above); fix or "
                     "remove them from the dataset before training")
    return 0


def _cmd_datasets_download(args: argparse.Namespace) -> int:
    from multiguard.data.download import DownloadError, download_dataset

    say = (lambda line: None) if args.quiet else echo
    try:
        result = download_dataset(args.name, args.root, manifest=args.manifest, progress=False if args.quiet else None,
                                  retries=args.retries, keep_archives=args.keep_archives, log=say)
    except DownloadError as exc:  # one line per URL tried, then what to do
        for line in exc.lines:
            print(f"multiguard: error: {line.rstrip()}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    for name in result.present:
        say(f"{name}: already in {args.root} (left alone)")
    for name in result.fetched:
        say(f"{name}: fetched, checked and unpacked into {args.root}")
    if result.manual:
        for line in result.manual:
            echo(line)
        return fail(f"{args.name} in {args.root} is not complete: do the steps above by hand, then run this command "
                    "again", EXIT_FAILURE)
    if not result.fetched:
        echo(f"{args.name} in {args.root} is complete: nothing to download")
    else:
        echo(f"{args.name} is in {args.root}")
    echo(f"next: multiguard datasets verify {args.name} --root {args.root}")
    return 0


def _cmd_datasets_verify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from multiguard.data.verify import verify_dataset

    report = verify_dataset(args.name, args.root, splits=args.split, manifest=args.manifest,
                            check_images=not args.labels_only, progress=False if args.json else None)
    if args.json:
        echo(json.dumps({"name": report.name, "root": str(report.root), "ok": report.ok,
                         "splits": [{**asdict(check), "ok": check.ok} for check in report.splits]}, indent=2))
    else:
        echo(report.text())
    if not report.ok:
        from multiguard.data.download import downloadable_names

        again = (f"or fetch the data again (multiguard datasets download {args.name} --root {args.root})"
                 if args.name in downloadable_names() else
                 "or remove the rows of missing images from the split's csv (your own data: there is nothing to "
                 "download; the layout: docs/own-data.md)")
        return fail(f"{len(report.problems)} problem(s) in {args.root} (listed above): fix them, {again}",
                    EXIT_FAILURE)
    return 0


def _datasets_list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _datasets_describe_options(p: argparse.ArgumentParser) -> None:
    from multiguard.data import DATASETS, dataset_names

    composed = [name for name, info in DATASETS.items() if info.composed]
    p.add_argument("--dataset", required=True, help=dataset_names())
    p.add_argument("--data-root", default=None, help="dataset folder (all datasets but multidigits)")
    p.add_argument("--split", action="append", default=None,
                   help="split to describe (repeatable; default: the train and test splits)")
    p.add_argument("--image-size", type=int, default=None, help="image side (labels do not depend on it)")
    p.add_argument("--seed", type=int, default=0,
                   help=f"{' and '.join(composed) or 'composed datasets'} only: the seed that composes it")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="dataset option (repeatable)")
    p.add_argument("--labels-only", action="store_true",
                   help="do not open the images (quick on large datasets; missing or corrupt files go unnoticed)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def _datasets_download_options(p: argparse.ArgumentParser) -> None:
    from multiguard.data.download import downloadable_names

    add_dataset_folder(p, names=downloadable_names(),
                       root_help="the dataset folder to fill (made if missing): give it as --data-root when training")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep the checked archives in ROOT/.multiguard-downloads after unpacking them")
    p.add_argument("--retries", type=int, default=3,
                   help="resumes of a dropped connection per URL (while bytes keep arriving) before the next URL")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _datasets_verify_options(p: argparse.ArgumentParser) -> None:
    from multiguard.data import DATASETS

    add_dataset_folder(p, names=[name for name, info in DATASETS.items() if info.needs_root],
                       root_help="the dataset folder (as given to --data-root)")
    p.add_argument("--split", action="append", default=None,
                   help="split to check (repeatable; default: the train and test splits)")
    p.add_argument("--labels-only", action="store_true",
                   help="do not open the images (counts and label files only; missing or corrupt images go unnoticed)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
