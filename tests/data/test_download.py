"""`datasets download`: through a real HTTP server on the loopback interface (tests/data_server.py) serving
small archives in the real VOC 2007 and COCO 2014 layouts, described by a test manifest.

What no test here can exercise is the real hosts (no network on the test machines): the loopback server
stands in for them with the same protocol (GET, Range requests, 206/416, dropped connections, 404s, refused
connections), and the shipped manifest is checked for its form and the published checksums only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from clitools import command, env, run
from data_server import (
    COCO_IMAGES,
    VOC_CLASSES,
    VOC_SPLITS,
    closed_port_url,
    coco_archives,
    file_entry,
    http_server,
    jpeg_bytes,
    voc_tar,
)

from multiguard.data import get_dataset
from multiguard.data.download import (
    DOWNLOAD_DIR,
    DownloadError,
    download_dataset,
    fetch_file,
    load_manifest,
    shipped_manifest,
)

VOC_CHECK = {split: [f"VOCdevkit/VOC2007/ImageSets/Main/{split}.txt",
                     f"VOCdevkit/VOC2007/ImageSets/Main/aeroplane_{split}.txt"] for split in VOC_SPLITS}
VOC_NAMES = {"trainval": "VOCtrainval_06-Nov-2007.tar", "test": "VOCtest_06-Nov-2007.tar"}


def write_manifest(path: Path, datasets: dict) -> Path:
    path.write_text(json.dumps({"manifest_version": 1, "datasets": datasets}))
    return path


def voc_manifest(tmp_path: Path, base: str, served, urls_for=None) -> Path:
    """Serve both VOC tars at ``base``/<name> and write a manifest naming them (``urls_for(name, url)``
    may put other URLs before or after)."""
    files = []
    for split, name in VOC_NAMES.items():
        data = voc_tar(split)
        served.files[f"/{name}"] = data
        url = f"{base}/{name}"
        urls = urls_for(name, url) if urls_for else [url]
        files.append(file_entry(name, data, urls, "tar", VOC_CHECK[split],
                                {"VOCdevkit/VOC2007/JPEGImages": len(VOC_SPLITS[split])}))
    return write_manifest(tmp_path / "manifest.json", {"voc2007": {"files": files, "splits": {"trainval": 3}}})


def labels_of(marks: dict[str, list[str]]) -> list[list[float]]:
    return [[1.0 if name in present else 0.0 for name in VOC_CLASSES] for present in marks.values()]


def assert_voc_loads(root: Path) -> None:
    for split, marks in VOC_SPLITS.items():
        dataset = get_dataset("voc2007", root=root, split=split, image_size=8)
        assert dataset.labels.tolist() == labels_of(marks)
        image, labels = dataset[len(dataset) - 1]
        assert image.shape == (3, 8, 8) and labels.tolist() == labels_of(marks)[-1]


def leftovers(root: Path) -> list[str]:
    """Files in the download folder other than .done markers (an archive, a .part, a temporary file)."""
    folder = root / DOWNLOAD_DIR
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".done")) if folder.exists() else []


# ------------------------------------------------------------------------------- complete downloads


def test_voc_download_unpacks_into_the_layout_the_loader_reads(tmp_path):
    root = tmp_path / "voc"
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served)
        result = download_dataset("voc2007", root, manifest=manifest, progress=False, log=lambda _: None)
    assert result.fetched == list(VOC_NAMES.values()) and result.present == [] and result.complete
    assert_voc_loads(root)
    assert leftovers(root) == []  # archives removed once unpacked; no .part
    assert not list(root.glob(".*.unpack.tmp"))
    marker = json.loads((root / DOWNLOAD_DIR / "VOCtest_06-Nov-2007.tar.done").read_text())
    assert marker["md5"] == hashlib.md5(voc_tar("test")).hexdigest()


def test_coco_download_unpacks_into_the_layout_the_loader_reads(tmp_path):
    root = tmp_path / "coco"
    archives = coco_archives()
    with http_server() as (base, served):
        files = []
        for name, data in archives.items():
            served.files[f"/{name}"] = data
            check = ["annotations/instances_val2014.json"] if name.startswith("annotations") else [name[:-4]]
            files.append(file_entry(name, data, [f"{base}/{name}"], "zip", check))
        manifest = write_manifest(tmp_path / "m.json", {"coco2014": {"files": files}})
        download_dataset("coco2014", root, manifest=manifest, progress=False, log=lambda _: None, keep_archives=True)
    assert sorted(leftovers(root)) == sorted(archives)  # keep_archives kept them, checked, under their names
    for split, images in COCO_IMAGES.items():
        dataset = get_dataset("coco2014", root=root, split=split, image_size=8)
        annotated = sorted(i for i, cats in images if cats)
        assert dataset.image_ids == annotated
        assert dataset.class_names == ["person", "car", "dog"]
        assert dataset[0][0].shape == (3, 8, 8)
    train = get_dataset("coco2014", root=root, split="train")
    assert train.labels.tolist() == [[1, 0, 0], [0, 1, 1]] and train.skipped_unannotated == 1


def test_a_second_run_finds_the_data_complete_and_downloads_nothing(tmp_path):
    root = tmp_path / "voc"
    logs = []
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served)
        download_dataset("voc2007", root, manifest=manifest, progress=False, log=lambda _: None)
        requests, sent = len(served.requests), served.total_sent()
        again = download_dataset("voc2007", root, manifest=manifest, progress=False, log=logs.append)
        assert len(served.requests) == requests and served.total_sent() == sent  # not one request
    assert again.fetched == [] and again.present == list(VOC_NAMES.values())
    assert_voc_loads(root)


def test_data_unpacked_by_hand_is_detected_and_left_alone(tmp_path):
    import io
    import tarfile

    root = tmp_path / "voc"
    for split in VOC_SPLITS:  # a user unpacked both tars themselves: no markers
        with tarfile.open(fileobj=io.BytesIO(voc_tar(split))) as tar:
            tar.extractall(root, filter="data")
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served)
        result = download_dataset("voc2007", root, manifest=manifest, progress=False, log=lambda _: None)
        assert served.requests == []
    assert result.present == list(VOC_NAMES.values()) and result.fetched == []


# ---------------------------------------------------------------------------------------- failures


def test_an_interrupted_download_resumes_from_where_it_stopped(tmp_path):
    root = tmp_path / "voc"
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served)
        size = len(served.files["/VOCtest_06-Nov-2007.tar"])
        cut = size // 3
        served.drop_after["/VOCtest_06-Nov-2007.tar"] = [cut]  # the first response breaks after a third
        logs = []
        download_dataset("voc2007", root, manifest=manifest, progress=False, log=logs.append)
        test_requests = [r for p, r in served.requests if p == "/VOCtest_06-Nov-2007.tar"]
        assert test_requests == [None, f"bytes={cut}-"]  # resumed with a Range request
        assert served.bytes_sent["/VOCtest_06-Nov-2007.tar"] == size  # not one byte twice
    assert any(f"resuming from byte {cut}" in line for line in logs)
    assert_voc_loads(root)


def test_a_killed_download_resumes_in_the_next_run(tmp_path):
    root = tmp_path / "voc"
    name = "VOCtrainval_06-Nov-2007.tar"
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served)
        size = len(served.files[f"/{name}"])
        cut = size // 2
        served.drop_after[f"/{name}"] = [cut]
        with pytest.raises(DownloadError) as failed:
            download_dataset("voc2007", root, manifest=manifest, progress=False, retries=0, log=lambda _: None)
        assert "next run resumes" in str(failed.value)
        part = root / DOWNLOAD_DIR / f"{name}.part"
        assert part.stat().st_size == cut and not (root / DOWNLOAD_DIR / name).exists()  # never the final name
        assert not (root / "VOCdevkit").exists()
        before = served.bytes_sent[f"/{name}"]
        download_dataset("voc2007", root, manifest=manifest, progress=False, log=lambda _: None)
        assert served.bytes_sent[f"/{name}"] - before == size - cut
        assert served.requests[-2] == (f"/{name}", f"bytes={cut}-")
    assert_voc_loads(root)


def _download_with_a_file_put_there_by_hand(tmp_path: Path, made_from) -> tuple[bytes, list, list[str]]:
    """Put ``made_from(archive bytes)`` where the VOC test archive goes, download, and return the archive's
    bytes, the requests made for it (their Range headers) and the log lines."""
    root, name = tmp_path / "voc", VOC_NAMES["test"]
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served)
        data = served.files[f"/{name}"]
        (root / DOWNLOAD_DIR).mkdir(parents=True)
        (root / DOWNLOAD_DIR / name).write_bytes(made_from(data))
        logs: list[str] = []
        download_dataset("voc2007", root, manifest=manifest, progress=False, log=logs.append)
        requests = [r for p, r in served.requests if p == f"/{name}"]
        assert served.bytes_sent[f"/{name}"] == sum(len(data) - int(r[6:-1]) if r else len(data) for r in requests)
    assert_voc_loads(root)
    return data, requests, logs


def test_a_truncated_archive_put_there_by_hand_is_kept_and_resumed(tmp_path):
    data, requests, logs = _download_with_a_file_put_there_by_hand(tmp_path, lambda data: data[: len(data) // 3])
    cut = len(data) // 3
    assert requests == [f"bytes={cut}-"]  # resumed, not fetched from zero
    said = [line for line in logs if "keeping its" in line]
    assert said and f"{cut} bytes where the manifest says {len(data)}" in said[0] and "resuming" in said[0]


def test_a_truncated_archive_by_hand_with_wrong_bytes_is_fetched_again_from_zero(tmp_path):
    # the right length so far, wrong bytes: resumed, found wrong, fetched again from zero
    data, requests, logs = _download_with_a_file_put_there_by_hand(tmp_path, lambda data: bytes(len(data) // 2))
    assert requests == [f"bytes={len(data) // 2}-", None]
    assert any("fetching it again from" in line for line in logs)


def test_a_wrong_archive_by_hand_is_said_to_be_deleted_before_it_is(tmp_path):
    # longer than the manifest's size: not a truncated copy
    data, requests, logs = _download_with_a_file_put_there_by_hand(tmp_path, lambda data: data + b"extra")
    assert requests == [None]
    assert any(f"{len(data) + 5} bytes where the manifest says {len(data)}; deleting it" in line for line in logs)


def test_a_corrupted_archive_is_refused_by_its_checksum_and_the_next_url_is_tried(tmp_path):
    root = tmp_path / "voc"
    logs = []
    with http_server() as (base, served):
        def urls(name, url):
            good = served.files[f"/{name}"]
            bad = bytearray(good)
            bad[len(bad) // 2] ^= 0xFF  # same size, one byte flipped
            served.files[f"/corrupt/{name}"] = bytes(bad)
            return [f"{base}/corrupt/{name}", url]

        manifest = voc_manifest(tmp_path, base, served, urls)
        download_dataset("voc2007", root, manifest=manifest, progress=False, log=logs.append)
        assert [p for p, _ in served.requests] == [f"/corrupt/{VOC_NAMES['trainval']}", f"/{VOC_NAMES['trainval']}",
                                                   f"/corrupt/{VOC_NAMES['test']}", f"/{VOC_NAMES['test']}"]
    refused = [line for line in logs if "refused" in line]
    assert len(refused) == 2 and all("md5" in line and "/corrupt/" in line and "next URL" in line for line in refused)
    assert_voc_loads(root)


def test_a_corrupted_archive_everywhere_leaves_nothing_under_its_name(tmp_path):
    root = tmp_path / "voc"
    with http_server() as (base, served):
        data = voc_tar("test")
        served.files["/a.tar"] = data[:-1] + bytes([data[-1] ^ 1])
        manifest = write_manifest(tmp_path / "m.json", {"voc2007": {"files": [
            file_entry(VOC_NAMES["test"], data, [f"{base}/a.tar"], "tar", VOC_CHECK["test"])]}})
        with pytest.raises(DownloadError, match=r"a\.tar: refused: md5 [0-9a-f]{32} where the manifest says"):
            download_dataset("voc2007", root, manifest=manifest, progress=False, log=lambda _: None)
    assert leftovers(root) == [] and not (root / "VOCdevkit").exists()


def test_a_dead_first_url_falls_through_to_a_mirror(tmp_path):
    root = tmp_path / "voc"
    logs = []
    dead = closed_port_url()
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served,
                                lambda name, url: [f"{dead}/{name}", f"{base}/gone/{name}", url])
        result = download_dataset("voc2007", root, manifest=manifest, progress=False, log=logs.append)
    assert result.fetched == list(VOC_NAMES.values())
    assert sum("refused" in line.lower() or "connection" in line.lower() for line in logs if dead in line) == 2
    assert sum("HTTP 404" in line for line in logs) == 2
    assert_voc_loads(root)


def test_no_network_one_line_per_url_and_what_to_do_nothing_written(tmp_path):
    root = tmp_path / "voc"
    name = VOC_NAMES["trainval"]
    urls = [closed_port_url(f"/{name}"), closed_port_url(f"/mirror/{name}")]
    manifest = write_manifest(tmp_path / "m.json", {"voc2007": {"files": [
        file_entry(name, b"x" * 10, urls, "tar", VOC_CHECK["trainval"])]}})
    with pytest.raises(DownloadError) as failed:
        download_dataset("voc2007", root, manifest=manifest, progress=False, log=lambda _: None)
    lines = failed.value.lines
    assert lines[0] == f"{name}: could not be fetched from any of its 2 URLs:"
    assert [line.split(": ")[0].strip() for line in lines[1:3]] == urls
    assert lines[3].startswith("what to do: check the network") and "--manifest" in lines[3]
    assert len(lines) == 4
    assert sorted(p.name for p in root.rglob("*")) == []  # nothing half-written (not even an empty .part)


def test_a_server_that_ignores_range_requests_starts_the_file_over(tmp_path):
    name = VOC_NAMES["test"]
    data = voc_tar("test")
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / f"{name}.part").write_bytes(data[:100])
    with http_server() as (base, served):
        served.files[f"/{name}"] = data
        served.ignore_range.add(f"/{name}")
        entry = load_manifest("voc2007", write_manifest(tmp_path / "m.json", {"voc2007": {"files": [
            file_entry(name, data, [f"{base}/{name}"], "tar", VOC_CHECK["test"])]}})).files[0]
        path = fetch_file(entry, folder, progress=False, log=lambda _: None)
        assert served.requests == [(f"/{name}", "bytes=100-")] and served.bytes_sent[f"/{name}"] == len(data)
    assert path.read_bytes() == data and not (folder / f"{name}.part").exists()


def test_an_archive_pointing_outside_the_root_is_refused(tmp_path):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    data = buffer.getvalue()
    with http_server() as (base, served):
        served.files["/evil.tar"] = data
        manifest = write_manifest(tmp_path / "m.json", {"voc2007": {"files": [
            file_entry("evil.tar", data, [f"{base}/evil.tar"], "tar", ["x"])]}})
        with pytest.raises(ValueError, match=r"refusing to unpack '\.\./escaped\.txt'"):
            download_dataset("voc2007", tmp_path / "root", manifest=manifest, progress=False, log=lambda _: None)
    assert not (tmp_path / "escaped.txt").exists()


# ---------------------------------------------------------------------------------------- NUS-WIDE


def test_nuswide_fetches_the_split_says_what_to_fetch_by_hand_then_checks_it(tmp_path):
    root = tmp_path / "nus"
    csv_text = (",filepath,label,split_name\n0,images/a.jpg,\"['sky', 'clouds']\",train\n"
                "1,images/b.jpg,\"['zebra']\",val\n")
    with http_server() as (base, served):
        served.files["/nus_wid_data.csv"] = csv_text.encode()
        served.files["/error.csv"] = b"<html><body>Access denied</body></html>"
        entry = {"name": "nus_wid_data.csv", "urls": [f"{base}/error.csv", f"{base}/nus_wid_data.csv"],
                 "size": None, "checksum_note": "none published", "unpack": "none", "check": ["nus_wid_data.csv"],
                 "licence": "test"}
        shipped = json.loads((Path(__file__).parents[2] / "src/multiguard/data/manifest.json").read_text())
        nus = dict(shipped["datasets"]["nuswide"], files=[entry])
        manifest = write_manifest(tmp_path / "m.json", {"nuswide": nus})
        logs = []
        first = download_dataset("nuswide", root, manifest=manifest, progress=False, log=logs.append)
    assert any("error.csv: refused: not the label csv" in line for line in logs)
    assert not first.complete and any(str(root) in step for step in first.manual)
    assert any("drive.google.com" in step for step in first.manual)
    assert any("2 of the 2 images" in line for line in logs)
    assert (root / "Concepts81.txt").read_text().splitlines() == nus["concepts"]
    for name in ("a", "b"):  # the user puts the images where the steps said
        (root / "images").mkdir(exist_ok=True)
        (root / "images" / f"{name}.jpg").write_bytes(jpeg_bytes((10, 20, 30)))
    second = download_dataset("nuswide", root, manifest=manifest, progress=False, log=lambda _: None)
    assert second.complete and second.fetched == [] and second.present == ["nus_wid_data.csv"]
    train = get_dataset("nuswide", root=root, split="train", image_size=8)
    names = nus["concepts"]
    assert train.labels.shape == (1, 81)
    assert torch.nonzero(train.labels[0]).flatten().tolist() == sorted([names.index("sky"), names.index("clouds")])


# ---------------------------------------------------------------------------------------- manifest


def test_shipped_manifest_names_official_hosts_first_and_the_published_checksums():
    manifest = shipped_manifest()
    assert set(manifest) == {"voc2007", "coco2014", "nuswide"}
    trainval = manifest["voc2007"].files[0]
    assert trainval.name == "VOCtrainval_06-Nov-2007.tar"
    assert trainval.checksums["md5"] == "c52e279531787c972589f7e41ab4ae64"
    assert trainval.urls[0].startswith("https://thor.robots.ox.ac.uk/")
    assert all(f.size and f.checksums and f.licence for name in ("voc2007", "coco2014") for f in manifest[name].files)
    assert manifest["voc2007"].splits == {"trainval": 5011, "test": 4952, "train": 2501, "val": 2510}
    assert manifest["coco2014"].splits == {"train": 82783, "val": 40504}
    assert manifest["coco2014"].annotated == {"train": 82081, "val": 40137}
    assert len(manifest["nuswide"].concepts) == 81 and manifest["nuswide"].manual


def test_a_user_manifest_replaces_the_datasets_it_names(tmp_path):
    data = b"mirror"
    path = write_manifest(tmp_path / "mine.json", {"voc2007": {"files": [
        file_entry("x.tar", data, ["https://mirror.example.edu/x.tar"], "tar", ["VOCdevkit"])]}})
    assert load_manifest("voc2007", path).files[0].urls == ("https://mirror.example.edu/x.tar",)
    assert load_manifest("coco2014", path).files[0].name == "annotations_trainval2014.zip"  # still shipped


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.pop("urls"), r"'urls' must be a non-empty list"),
    (lambda f: f.update(md5="XYZ"), r"'md5' must be 32 lowercase hex digits"),
    (lambda f: f.pop("md5") and f.pop("sha256"), r"give a checksum .* or a 'checksum_note'"),
    (lambda f: f.update(unpack="rar"), r"'unpack' must be one of tar, zip, none"),
    (lambda f: f.update(check=["../outside"]), r"paths must be relative and stay below the root"),
    (lambda f: f.pop("licence"), r"'licence' must say the file's licence"),
])
def test_a_bad_manifest_is_one_line_naming_the_file_and_the_field(tmp_path, change, message):
    entry = file_entry("x.tar", b"data", ["https://example.org/x.tar"], "tar", ["VOCdevkit"])
    change(entry)
    path = write_manifest(tmp_path / "bad.json", {"voc2007": {"files": [entry]}})
    with pytest.raises(ValueError, match=rf"manifest: .*bad\.json: datasets\.voc2007\.files\[0\].*{message}"):
        load_manifest("voc2007", path)
    with pytest.raises(ValueError, match="name: no download is known for dataset 'imagenet'"):
        load_manifest("imagenet")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"manifest: cannot read .*broken\.json as JSON"):
        load_manifest("voc2007", tmp_path / "broken.json")


def test_the_downloader_does_not_import_torch_and_names_the_files_the_loader_reads():
    import subprocess
    import sys

    code = ("import sys, multiguard.data.download as d; d.shipped_manifest(); "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from multiguard.data import download, nuswide

    assert (download.NUSWIDE_CSV, download.NUSWIDE_CONCEPTS) == (nuswide.CSV_NAME, nuswide.CONCEPTS_NAME)


def test_a_local_file_url_works_as_a_mirror(tmp_path):
    data = voc_tar("test")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / VOC_NAMES["test"]).write_bytes(data)
    url = (tmp_path / "cache" / VOC_NAMES["test"]).as_uri()
    manifest = write_manifest(tmp_path / "m.json", {"voc2007": {"files": [
        file_entry(VOC_NAMES["test"], data, [closed_port_url(), url], "tar", VOC_CHECK["test"])]}})
    download_dataset("voc2007", tmp_path / "root", manifest=manifest, progress=False, log=lambda _: None)
    assert len(get_dataset("voc2007", root=tmp_path / "root", split="test")) == 2


def test_a_process_killed_mid_download_leaves_only_a_part_and_the_next_run_resumes_it(tmp_path):
    import os
    import signal
    import subprocess
    import time

    root = tmp_path / "voc"
    name = VOC_NAMES["trainval"]
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served)
        size = len(served.files[f"/{name}"])
        cut = size // 3
        served.stall_after[f"/{name}"] = cut  # the first response sends a third, then hangs
        proc = subprocess.Popen([*command(), "datasets", "download", "voc2007", "--root", str(root), "--manifest",
                                 str(manifest)], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        part = root / DOWNLOAD_DIR / f"{name}.part"
        try:
            assert served.stalled.wait(60)
            for _ in range(200):  # the bytes sent reach the file
                if part.exists() and part.stat().st_size == cut:
                    break
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)  # as a power cut or a killed job would
        finally:
            proc.wait(30)
        assert part.stat().st_size == cut and not (root / DOWNLOAD_DIR / name).exists()
        assert not (root / "VOCdevkit").exists()
        served.release.set()
        again = run("datasets", "download", "voc2007", "--root", str(root), "--manifest", str(manifest), "--quiet")
        assert f"voc2007 is in {root}" in again.stdout
        assert (f"/{name}", f"bytes={cut}-") in served.requests
        assert served.bytes_sent[f"/{name}"] == size  # the kept third was not sent again
    assert_voc_loads(root)


# ------------------------------------------------------------------------------------- command line


def test_command_line_download_verify_and_a_second_run_that_does_nothing(tmp_path):
    root = tmp_path / "voc"
    with http_server() as (base, served):
        manifest = voc_manifest(tmp_path, base, served)
        first = run("datasets", "download", "voc2007", "--root", str(root), "--manifest", str(manifest))
        assert f"{VOC_NAMES['trainval']}: fetched, checked and unpacked into {root}" in first.stdout
        assert f"next: multiguard datasets verify voc2007 --root {root}" in first.stdout
        requests = len(served.requests)
        second = run("datasets", "download", "voc2007", "--root", str(root), "--manifest", str(manifest))
        assert len(served.requests) == requests
    assert f"voc2007 in {root} is complete: nothing to download" in second.stdout
    assert f"{VOC_NAMES['test']}: already in {root} (left alone)" in second.stdout
    verified = run("datasets", "verify", "voc2007", "--root", str(root), "--manifest", str(manifest),
                   "--split", "trainval")
    assert "trainval: 3 images (official: 3); ok" in verified.stdout and verified.stdout.rstrip().endswith("verify: ok")


def test_command_line_no_network_one_line_per_url_what_to_do_exit_1(tmp_path):
    root = tmp_path / "voc"
    name = VOC_NAMES["trainval"]
    urls = [closed_port_url(f"/{name}"), closed_port_url(f"/mirror/{name}")]
    manifest = write_manifest(tmp_path / "m.json", {"voc2007": {"files": [
        file_entry(name, b"x" * 10, urls, "tar", VOC_CHECK["trainval"])]}})
    proc = run("datasets", "download", "voc2007", "--root", str(root), "--manifest", str(manifest), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"multiguard: error: {name}: could not be fetched from any of its 2 URLs:"
    assert [line.removeprefix("multiguard: error:").strip().split(": ")[0] for line in lines[1:3]] == urls
    assert lines[3].startswith("multiguard: error: what to do: check the network") and len(lines) == 4
    assert sorted(root.rglob("*")) == []


def test_command_line_nuswide_says_what_to_fetch_by_hand_exit_1(tmp_path):
    root = tmp_path / "nus"
    with http_server() as (base, served):
        served.files["/nus_wid_data.csv"] = b",filepath,label,split_name\n0,images/a.jpg,\"['sky']\",train\n"
        shipped = json.loads((Path(__file__).parents[2] / "src/multiguard/data/manifest.json").read_text())
        nus = dict(shipped["datasets"]["nuswide"], files=[
            {"name": "nus_wid_data.csv", "urls": [f"{base}/nus_wid_data.csv"], "size": None, "checksum_note": "none",
             "unpack": "none", "check": ["nus_wid_data.csv"], "licence": "test"}])
        manifest = write_manifest(tmp_path / "m.json", {"nuswide": nus})
        proc = run("datasets", "download", "nuswide", "--root", str(root), "--manifest", str(manifest), check=False)
    assert proc.returncode == 1
    assert "drive.google.com" in proc.stdout and f"Unpack it into {root} so that" in proc.stdout
    assert proc.stderr.strip() == (f"multiguard: error: nuswide in {root} is not complete: do the steps above by "
                                   "hand, then run this command again")


def test_command_line_bad_manifest_and_unknown_name_are_one_line_errors(tmp_path):
    from clitools import assert_one_line_error

    (tmp_path / "bad.json").write_text("{")
    assert_one_line_error(run("datasets", "download", "voc2007", "--root", str(tmp_path / "r"), "--manifest",
                              str(tmp_path / "bad.json"), check=False), "bad.json")
    assert_one_line_error(run("datasets", "download", "imagenet", "--root", str(tmp_path), check=False),
                          "invalid choice: 'imagenet'")
    assert not (tmp_path / "r").exists()
