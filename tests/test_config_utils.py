"""``nestlearn.utils.config``: the one strict config reader (run config, model.mixer, cms)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nestlearn.utils.config import ConfigError, check_keys, from_dict


@dataclass
class _Opts:
    chunk_size: int = 32
    max_lr: float = 0.5
    window: int | None = None
    periods: tuple[int, ...] = (16, 64)

    def __post_init__(self) -> None:
        if not self.max_lr > 0:
            raise ValueError(f"max_lr must be > 0, got {self.max_lr}; try 0.5")


def test_types_are_checked_and_converted() -> None:
    o = from_dict(_Opts, {"chunk_size": 16.0, "max_lr": 1, "periods": [4, 8]})
    assert o == _Opts(16, 1.0, None, (4, 8)) and isinstance(o.max_lr, float)
    with pytest.raises(ConfigError, match=r"model.mixer.chunk_size: expected an integer, got 'x'"):
        from_dict(_Opts, {"chunk_size": "x"}, "model.mixer.", what="model.mixer options")
    with pytest.raises(ConfigError, match="window: expected int or NoneType, got True"):
        from_dict(_Opts, {"window": True})


def test_unknown_keys_name_the_closest_and_the_known() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(_Opts, {"chunk": 3}, "model.mixer.", what="model.mixer options", owner="hope")
    assert str(e.value).startswith(
        "unknown model.mixer options ['chunk'] for hope; did you mean model.mixer.chunk_size? "
        "known: chunk_size, max_lr, periods, window"
    )
    with pytest.raises(ConfigError, match=r"^unknown config key optim.lrr; did you mean optim.lr\?$"):
        check_keys({"lrr": 1}, ["lr", "betas"], prefix="optim.")
    with pytest.raises(ConfigError, match=r"\['window'\] for titans-mac"):
        from_dict(_Opts, {"window": 4}, what="model.mixer options", owner="titans-mac", skip=["window"])


def test_the_dataclass_check_names_its_group() -> None:
    with pytest.raises(ConfigError, match=r"^model.mixer: max_lr must be > 0, got 0.0; try 0.5$"):
        from_dict(_Opts, {"max_lr": 0}, "model.mixer.", what="model.mixer options")
    # the run-config style keeps the dataclass's own message as it is
    with pytest.raises(ConfigError, match=r"^max_lr must be > 0"):
        from_dict(_Opts, {"max_lr": 0}, "model.mixer.")
