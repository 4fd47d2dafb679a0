"""The training recipe every search benchmark uses: the quick preset's (batch size, learning
rate, warm-up) on a chosen data set, epochs, threads and device, so that their figures compare."""

from __future__ import annotations

__all__ = ["quick_training"]


def quick_training(dataset: str, data_dir: str, epochs: int, threads: int | None, device: str = "cpu"):
    """``TrainingSettings`` of the quick preset with these data, epochs, threads and device."""
    from search.settings import PRESETS, TrainingSettings

    quick = PRESETS["quick"]
    return TrainingSettings(
        dataset=dataset,
        data_dir=data_dir,
        epochs=epochs,
        batch_size=quick["batch_size"],
        lr=quick["lr"],
        warmup_epochs=quick["warmup_epochs"],
        threads=threads,
        device=device,
    )
