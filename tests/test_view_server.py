"""``cloudclear view``: the server's routes, token, bad parameters and paths (docs/view.md)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudclear.cli import app

runner = CliRunner()
TOKEN = "test-token"
DAY = "2021-04-16"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """A 64 x 64 series of 3 dates, its catalog, one gapfill output of the middle date (with the
    date's truth beside it, so it has a reference) and a symlink pointing out of the folder."""
    from cloudclear.synth import generate_series

    root = tmp_path_factory.mktemp("view")
    series = generate_series(
        root / "T31UFQ", height=64, width=64, n_dates=3, s1=False, seed=3, cloud_cover=[0.1, 0.5, 0.1]
    )
    catalog = root / "cat.gpkg"
    res = runner.invoke(app, ["index", str(root / "T31UFQ"), "-c", str(catalog), "--no-detect"])
    assert res.exit_code == 0, res.output
    out = root / "out"
    out.mkdir()
    pred = out / "S2_T31UFQ_20210416_gapfill.tif"
    res = runner.invoke(app, ["infer", "-c", str(catalog), "-d", DAY, "-o", str(pred), "--method", "gapfill"])
    assert res.exit_code == 0, res.output
    shutil.copy(series.truth[1], out / series.truth[1].name)
    # an output outside the folder, linked into it: not listed
    outside = root / "elsewhere"
    outside.mkdir()
    shutil.copy(pred, outside / "S2_T31UFQ_20210401_gapfill.tif")
    os.symlink(outside / "S2_T31UFQ_20210401_gapfill.tif", out / "S2_T31UFQ_20210401_link.tif")
    return {"root": root, "catalog": catalog, "out": out, "series": series}


@pytest.fixture(scope="module")
def server(world):
    from cloudclear.view import make_server

    srv = make_server([world["catalog"], world["out"]], "127.0.0.1", 0, token=TOKEN)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _base(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def get(srv, path: str, token: str | None = TOKEN, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    sep = "&" if "?" in path else "?"
    url = _base(srv) + path + (f"{sep}token={token}" if token is not None else "")
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def raw_get(srv, path: str) -> tuple[int, bytes]:
    """A request sent as written (urllib would not send every odd path)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def post(srv, path: str, body: Any, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(_base(srv) + path, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("X-Cloudclear-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def one_line_error(status: int, body: bytes, code: int) -> str:
    assert status == code, body
    msg = json.loads(body)["error"]
    assert msg and "\n" not in msg
    return msg


def state(srv) -> dict[str, Any]:
    status, ctype, body = get(srv, "/api/state")
    assert status == 200 and ctype == "application/json"
    return json.loads(body)


def png_size(body: bytes) -> tuple[int, int]:
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")


def wait_run(srv, run_id: str) -> dict[str, Any]:
    for _ in range(600):
        status, _, body = get(srv, f"/api/run/{run_id}")
        assert status == 200
        got = json.loads(body)
        assert 0 <= got["progress"] <= 1
        if got["state"] != "running":
            return got
        time.sleep(0.1)
    raise AssertionError("the run did not finish")


@pytest.mark.slow
def test_state_lists_scenes_outputs_methods_and_places(server):
    st = state(server)
    assert [s["date"] for s in st["scenes"]] == ["2021-04-01", "2021-04-16", "2021-05-01"]
    s = st["scenes"][1]
    assert s["place"] == "31UFQ" and s["has_mask"] and s["bands"] == ["B02", "B03", "B04", "B08"]
    assert len(s["footprint"]) >= 4 and all(len(p) == 2 for p in s["footprint"])
    (o,) = st["outputs"]  # the symlink pointing out of the folder is not listed
    assert o["name"] == "S2_T31UFQ_20210416_gapfill.tif" and o["date"] == DAY and o["method"] == "gapfill"
    assert o["has_status"] and not o["hidden"] and o["has_reference"]
    assert "/" not in o["id"] and st["methods"][0] == "gapfill" and st["places"] == ["31UFQ"]


@pytest.mark.slow
def test_info_and_images_of_every_kind(server):
    st = state(server)
    sid, oid = st["scenes"][1]["id"], st["outputs"][0]["id"]
    for kind, iid in (("scene", sid), ("mask", sid), ("output", oid), ("status", oid)):
        status, _, body = get(server, f"/api/info?kind={kind}&id={iid}")
        assert status == 200, body
        info = json.loads(body)
        assert info["width"] == info["height"] == 64 and info["date"] == DAY and info["crs"].startswith("EPSG:")
        status, ctype, body = get(server, f"/api/image?kind={kind}&id={iid}")
        assert status == 200 and ctype == "image/png", body
        assert png_size(body) == (64, 64)  # the full extent at its own resolution
        left, bottom, right, top = info["bounds"]
        half = f"{left},{bottom},{(left + right) / 2},{(bottom + top) / 2}"
        for bands in ("rgb", "false"):
            status, _, body = get(
                server, f"/api/image?kind={kind}&id={iid}&bbox={half}&width=100&height=40&bands={bands}"
            )
            assert status == 200, body
            assert png_size(body) == (100, 40)


@pytest.mark.slow
def test_scores_of_an_output_with_a_reference(server):
    oid = state(server)["outputs"][0]["id"]
    status, _, body = get(server, f"/api/scores?id={oid}")
    assert status == 200, body
    got = json.loads(body)
    assert got["reference"].endswith("_truth.tif") and got["pixels"] == "cloudy"
    assert got["psnr"] > 10 and 0 < got["ssim"] <= 1 and got["rmse"] >= 0
    msg = one_line_error(*get(server, "/api/scores?id=nope")[::2], 404)
    assert "nope" in msg


def test_the_token_is_needed(server):
    for token in (None, "wrong", TOKEN + "x"):
        for path in ("/", "/api/state", "/api/info?kind=scene&id=x", "/api/run/x"):
            status, _, body = get(server, path, token=token)
            one_line_error(status, body, 403)
        assert post(server, "/api/run", {"date": DAY, "method": "gapfill"}, token=token)[0] == 403
    status, _, _ = get(server, "/api/state", token=None, headers={"X-Cloudclear-Token": TOKEN})
    assert status == 200


def test_bad_parameters_are_400(server):
    st = state(server)
    sid = st["scenes"][0]["id"]
    for query in (
        "kind=file&id=x",
        f"kind=scene&id={sid}&bbox=1,2,3",
        f"kind=scene&id={sid}&bbox=3,2,1,4",
        f"kind=scene&id={sid}&bbox=a,b,c,d",
        f"kind=scene&id={sid}&width=0",
        f"kind=scene&id={sid}&width=4000",
        f"kind=scene&id={sid}&height=x",
        f"kind=scene&id={sid}&bands=swir",
        "id=x",
    ):
        status, _, body = get(server, f"/api/image?{query}")
        one_line_error(status, body, 400)
    for body in (
        {"date": DAY, "method": "rm -rf /"},
        {"date": DAY, "method": "/tmp/model.safetensors"},
        {"date": "2021-13-01", "method": "gapfill"},
        {"date": "../../etc", "method": "gapfill"},
        {"date": "2020-01-01", "method": "gapfill"},
        {"date": DAY, "method": "gapfill", "place": "../x"},
        {"method": "gapfill"},
        ["gapfill"],
    ):
        status, got = post(server, "/api/run", body)
        assert status == 400 and got["error"], body
    status, got = post(server, "/api/run", b"not json")
    assert status == 400


def test_unknown_ids_routes_and_paths_are_404(server):
    for path in (
        "/api/info?kind=scene&id=nope",
        "/api/info?kind=output&id=nope",
        "/api/image?kind=mask&id=nope",
        "/api/image?kind=status&id=../../etc/passwd",
        "/api/run/nope",
        "/api/nothing",
    ):
        status, _, body = get(server, path)
        one_line_error(status, body, 404)
    for path in (
        "/nothing",
        "/static/../x",
        "/static/%2e%2e/x",
        "/static/..%2fview.py",
        "/static//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
        "/static/../server.py",
        "/static/.hidden",
        "/etc/passwd",
        "/static/",
    ):
        status, body = raw_get(server, path)
        assert status in (400, 404), path
        assert "error" in json.loads(body)


def test_other_methods_are_answered_in_json(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.request("DELETE", f"/api/state?token={TOKEN}")
    r = conn.getresponse()
    assert r.status == 501 and json.loads(r.read())["error"]
    conn.close()


def test_static_files_are_served_without_token(server):
    from cloudclear.view.server import STATIC

    names = sorted(p.name for p in STATIC.glob("*") if p.is_file()) if STATIC.is_dir() else []
    if not names:
        pytest.skip("no static files yet")
    status, _, body = get(server, f"/static/{names[0]}", token=None)
    assert status == 200 and body == (STATIC / names[0]).read_bytes()
    if "index.html" in names:
        status, ctype, _ = get(server, "/")
        assert status == 200 and ctype.startswith("text/html")


@pytest.mark.slow
def test_a_run_from_the_page_writes_an_output_and_a_second_is_409(server, monkeypatch):
    import cloudclear.inference.pipeline as pipeline

    release = threading.Event()
    real = pipeline.infer

    def slow_infer(*args: Any, **kwargs: Any) -> Any:
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "infer", slow_infer)
    status, got = post(server, "/api/run", {"date": "2021-05-01", "method": "gapfill", "place": "31UFQ"})
    assert status == 202, got
    run_id = got["run"]
    status, got = post(server, "/api/run", {"date": DAY, "method": "gapfill"})
    assert status == 409 and got["error"]
    status, _, body = get(server, f"/api/run/{run_id}")
    assert status == 200 and json.loads(body)["state"] == "running"
    release.set()
    done = wait_run(server, run_id)
    assert done["state"] == "done" and done["progress"] == 1, done
    outputs = {o["id"]: o for o in state(server)["outputs"]}
    assert outputs[done["output"]]["name"] == "S2_T31UFQ_20210501_gapfill.tif"
    assert png_size(get(server, f"/api/image?kind=output&id={done['output']}&width=32&height=32")[2]) == (32, 32)
    # no reference for that date: scores 404
    one_line_error(*get(server, f"/api/scores?id={done['output']}")[::2], 404)


def test_the_command_refuses_a_missing_path(tmp_path):
    res = runner.invoke(app, ["view", str(tmp_path / "missing"), "--no-open"])
    assert res.exit_code == 1
    (line,) = [x for x in res.output.splitlines() if x]
    assert line.startswith("cloudclear: error:") and "missing" in line


def test_the_command_is_listed_in_help():
    res = runner.invoke(app, ["view", "--help"])
    assert res.exit_code == 0 and "--no-open" in res.output


@pytest.mark.slow
def test_the_command_prints_the_url_and_stops_on_ctrl_c(world, monkeypatch):
    from cloudclear.view import server as view_server

    def interrupt(self: Any, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(view_server.ViewServer, "serve_forever", interrupt)
    res = runner.invoke(app, ["view", str(world["out"]), "--no-open"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("cloudclear view: http://127.0.0.1:") and "/?token=" in lines[0]


def test_a_symlink_out_of_the_folder_is_not_listed(tmp_path):
    from cloudclear.view.state import ViewState

    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "x.tif").write_bytes(b"not a tiff")
    os.symlink(outside / "x.tif", out / "x.tif")
    os.symlink(outside, out / "sub")
    assert ViewState([out]).outputs() == []
    assert Path(out / "x.tif").exists()


def test_a_folder_gives_its_outputs_and_the_cloudclear_catalogs_beside_them(world, tmp_path):
    # As after the README's main job: `cloudclear view out/` with out/sample.gpkg beside the outputs
    # (and another GeoPackage that is no cloudclear catalog, left alone).
    import shutil

    from cloudclear.view.state import ViewState

    folder = tmp_path / "out"
    shutil.copytree(world["out"], folder, symlinks=True)
    shutil.copy(world["catalog"], folder / "sample.gpkg")
    (folder / "roads.gpkg").write_bytes(b"not a catalog")
    view = ViewState([folder])
    assert [c.path.name for c in view.catalogs] == ["sample.gpkg"]
    assert len(view.scenes()) == 3
    assert {o.path.name for o in view.outputs()} == {o.path.name for o in ViewState([world["out"]]).outputs()}
