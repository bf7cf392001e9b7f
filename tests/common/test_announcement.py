"""The model announcement's wire format: written by workers, read by gateways (common/contract.py)."""

from __future__ import annotations

import pytest

from common.contract import ContractError, ModelInfo, model_announcement, parse_model_announcement


def test_an_announcement_reads_back_as_the_model() -> None:
    model = ModelInfo(name="efficientnet-lite0", version="9ef744b3bc25")
    text = model_announcement(model)
    assert text == '{"name":"efficientnet-lite0","version":"9ef744b3bc25"}'
    assert parse_model_announcement(text) == model == parse_model_announcement(text.encode())


@pytest.mark.parametrize("raw", ["", "not json", "[]", '{"name": "x"}', "null"])
def test_a_malformed_announcement_is_a_contract_error(raw: str) -> None:
    with pytest.raises(ContractError, match="model announcement"):
        parse_model_announcement(raw)
