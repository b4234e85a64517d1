"""Training samples: catalog x acquisition layout -> a patch store, and the Dataset that reads it.

- :func:`sample` draws samples of a layout from a catalog and writes a store
  (:mod:`cloudclear.sampling.build`): where and when each slot can be filled comes from the
  catalog's scenes and per-cell grids (:mod:`~cloudclear.sampling.candidates`), the draw order
  and splits from :mod:`~cloudclear.sampling.draw`, each sample's patches are read by
  :mod:`~cloudclear.sampling.patches`;
- :class:`PatchDataset` reads a store for a PyTorch DataLoader, :class:`PatchStore` gives the raw
  arrays and the metadata table (:mod:`cloudclear.sampling.store`).

Example, on a synthetic series (``cloudclear synth out/T31UFQ --size 480 --dates 10 --interval 15
--start 2021-04-01 --seed 42``, then ``cloudclear index out/T31UFQ``)::

    from cloudclear.sampling import PatchDataset, SampleOptions, sample

    result = sample("out/T31UFQ", "OS2", "out/os2", SampleOptions(patch_size=128, count=40,
                    simulate=("t",)))
    train = PatchDataset(result.path, split="train")
    item = train[0]          # {"t": (4, 128, 128) float32, "t.valid": ..., "t.truth": ..., ...}
"""

from cloudclear.sampling.build import SampleOptions, SampleResult, array_specs, sample
from cloudclear.sampling.store import PatchDataset, PatchStore

__all__ = ["PatchDataset", "PatchStore", "SampleOptions", "SampleResult", "array_specs", "sample"]
