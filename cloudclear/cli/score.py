"""``cloudclear score``: MAE, RMSE, PSNR, SSIM and SAM of predictions against references."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cloudclear.cli.options import expand_globs, json_option, overwrite_option, parse_bands, progress, quiet


def _expand(patterns: list[str] | None, what: str) -> list[str]:
    """Expand the globs among ``patterns``, leaving out the status sidecars they match (``infer``
    writes ``NAME_status.tif`` beside ``NAME.tif``: ``'out/*.tif'`` matches both); files named
    one by one are kept as given."""
    from cloudclear.metrics import drop_status_sidecars

    out: list[str] = []
    for pattern in patterns or []:
        hits = expand_globs([pattern], what)
        if hits == [pattern]:
            out.append(pattern)
            continue
        kept, dropped = drop_status_sidecars(hits)
        if not kept:
            raise typer.BadParameter(f"{pattern}: matches only status sidecars, no {what}")
        if dropped and not quiet():
            typer.echo(f"{pattern}: left out {len(dropped)} status sidecar(s) (*_status.tif)", err=True)
        out.extend(kept)
    return out


def score(
    paths: Annotated[
        list[str],
        typer.Argument(help="Predictions (globs allowed); without --ref, exactly PRED REF.", metavar="FILES"),
    ],
    ref: Annotated[
        list[str] | None,
        typer.Option("--ref", "-r", help="Reference(s): one for all predictions, or one per prediction."),
    ] = None,
    mask: Annotated[
        list[str] | None,
        typer.Option(
            "--mask", "-m", help="The input date's cloud mask (SCL, CLM, CLP...): one, or one per prediction."
        ),
    ] = None,
    ref_mask: Annotated[
        list[str] | None,
        typer.Option("--ref-mask", help="The reference's own mask; its non-clear pixels are left out."),
    ] = None,
    pixels: Annotated[
        str,
        typer.Option("--pixels", help="auto, or one of {pixel_sets} (auto: cloudy with --mask)."),
    ] = "auto",
    aggregate: Annotated[
        str, typer.Option("--aggregate", help="How figures of several images combine: {aggregations}.")
    ] = "pooled",
    bands: Annotated[
        str | None, typer.Option("--bands", help="Bands to compare, by name or 1-based index: B02,B03,B04,B08.")
    ] = None,
    peak: Annotated[float, typer.Option("--peak", help="PSNR peak and SSIM range (1.0; 10000 with --scale 1).")] = 1.0,
    scale: Annotated[
        float, typer.Option("--scale", help="Reflectance = DN / scale, for files whose metadata give no scale.")
    ] = 10000.0,
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="Clip reflectance to [0, peak].")] = True,
    sam_units: Annotated[str, typer.Option("--sam", help="SAM units: {sam_units}.")] = "deg",
    nodata: Annotated[
        float | None, typer.Option("--nodata", help="Value to ignore in both rasters (default: each file's nodata).")
    ] = None,
    ssim_window: Annotated[
        str,
        typer.Option(
            "--ssim-window",
            help="SSIM window: {ssim_windows} (gaussian: 11 x 11, sigma 1.5; uniform: 7 x 7, sample covariance).",
        ),
    ] = "gaussian",
    reproject: Annotated[
        bool,
        typer.Option(
            "--reproject", help="Warp predictions onto the reference grid (bilinear) when CRS or resolution differ."
        ),
    ] = False,
    mask_convention: Annotated[
        str | None,
        typer.Option(
            "--mask-convention", help="Mask convention ({mask_conventions}), when a mask's name does not say."
        ),
    ] = None,
    as_json: Annotated[bool, json_option("Print JSON (overall mae, rmse, psnr, ssim, sam, then per band).")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV, one row per prediction and band.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG: RGB quicklooks, error maps, per-band bars.")
    ] = None,
    input_path: Annotated[
        str | None, typer.Option("--input", help="The cloudy input, shown in the --plot figure.")
    ] = None,
    block_rows: Annotated[int, typer.Option("--block-rows", help="Rows read per strip (memory grows with it).")] = 512,
    overwrite: Annotated[bool, overwrite_option("an existing --plot PNG")] = False,
) -> None:
    """Score predictions against a cloud-free reference: MAE, RMSE, PSNR, SSIM, SAM.

    \b
      cloudclear score PRED REF                   one prediction
      cloudclear score --ref REF PRED1 PRED2 ...  compare methods
      cloudclear score --ref REF 'out/*.tif'      the same with a glob (status
                                                  sidecars *_status.tif are
                                                  left out)
      cloudclear score --ref 'truth/*.tif' 'pred/*.tif' --mask 'S2/*_SCL.tif'
                                                  a sequence: pairs by sorted
                                                  order

    Values: reflectance x = DN * scale + offset (the file's scale/offset, its BOA_ADD_OFFSET and
    QUANTIFICATION_VALUE tags, else DN / --scale), clipped to [0, peak]. Over the scored pixels P
    and bands b (per band: over P only):

    \b
      MAE  = mean |p - r|
      RMSE = sqrt(mean (p - r)^2)
      PSNR = 20 log10(peak / RMSE)   (overall: from the MSE pooled over bands)
      SSIM = mean of (2 mu_p mu_r + C1)(2 cov_pr + C2)
                     / ((mu_p^2 + mu_r^2 + C1)(var_p + var_r + C2)),
             C1 = (0.01 peak)^2, C2 = (0.03 peak)^2, local statistics in the
             --ssim-window, over the pixels of P whose window lies inside the
             image and holds no nodata; then the mean over bands
      SAM  = mean over P of arccos(<p, r> / (|p| |r|)), the angle between the
             spectra

    Pixels (--pixels, from the input date's cloud mask --mask): all; cloudy (cloud, thin cloud,
    shadow); clear (clear, snow); occluded (cloudy or nodata in the input, as U-TILISE);
    observed (= clear). --ref-mask leaves out pixels the reference's own mask does not call
    clear. Several images combine pooled (one sum over all pixels) or per image (mean of figures).
    Defaults follow U-TILISE: reflectance / 10000, peak 1, the masked (cloudy) pixels when a
    mask is given, SAM in degrees.
    """
    from cloudclear.errors import ScoreError
    from cloudclear.metrics import ScoreOptions, pair_up, score_many

    files = _expand(paths, "prediction")
    refs = _expand(ref, "reference")
    if not refs:
        if len(files) != 2:
            raise typer.BadParameter("give PRED REF, or the reference with --ref REF and any number of predictions")
        files, refs = files[:1], files[1:]
    if as_json and as_csv:
        raise typer.BadParameter("--json and --csv: choose one")
    try:
        # the library validates the names against its registries (PIXEL_SETS, SSIM_WINDOWS...)
        options = ScoreOptions(
            pixels=pixels,
            aggregate=aggregate,
            scale=scale,
            peak=peak,
            clip=clip,
            sam_units=sam_units,
            nodata=nodata,
            bands=parse_bands(bands),
            ssim_window=ssim_window,
            reproject=reproject,
            block_rows=block_rows,
        )
    except ScoreError as exc:
        raise typer.BadParameter(str(exc)) from None
    pairs = pair_up(files, refs, expand_globs(mask, "mask"), expand_globs(ref_mask, "reference mask"))
    if plot is not None:
        from cloudclear.plots import check_plot_target

        check_plot_target(plot, overwrite)  # a refused PNG costs no scoring
    result = score_many(pairs, options, mask_convention=mask_convention, progress=progress(), views=800 if plot else 0)
    if plot is not None:
        from cloudclear.plots import plot_comparison

        plot_comparison(
            plot, result, pairs, input_path=input_path, mask_convention=mask_convention, overwrite=overwrite
        )
    if as_json:
        typer.echo(result.to_json())
    elif as_csv:
        typer.echo(result.to_csv(), nl=False)
    else:
        typer.echo(result.to_text())
    if plot is not None:
        typer.echo(f"figure: {plot}", err=True)
