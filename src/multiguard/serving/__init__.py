"""Certified predictions at inference time: the predict step (checkpoint and image files to certified
labels, ``predict``).

A sibling of :mod:`multiguard.evaluation` (neither imports the other). May import :mod:`multiguard.runs`,
:mod:`multiguard.training` and everything below them.
"""


def __getattr__(name: str):  # noqa: ANN202 - the serve extra (FastAPI) is imported only when asked for
    if name in ("create_app", "ServeSettings"):
        from multiguard.serving import app

        return getattr(app, name)
    if name in ("load_model", "LoadedModel"):
        from multiguard.serving import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'multiguard.serving' has no attribute {name!r}")
