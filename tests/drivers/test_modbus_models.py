"""Each bundled meter model decodes a hand-made register dump (what the real meter would send) into the
right sample; the OCMF helpers sign, verify and refuse tampering. No I/O."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from drivers.modbus.codec import MapError, available_maps, build_sample, decode_batch, load_map, parse_map, plan_reads
from drivers.modbus.ocmf import (
    OcmfError,
    parse_ocmf,
    public_key_der,
    sign_ocmf,
    text_to_words,
    transaction_ref_words,
    verify_ocmf,
    words_to_bytes,
)
from hal.types import MeterSample

MODELS = ["sdm630", "sdm120", "abb_b23", "em340", "ocmf"]


def decode_dump(model: str, dump: dict[int, list[int]]) -> tuple[dict[str, float | None], MeterSample]:
    """Answer every planned read from ``dump`` (address -> words; unlisted registers read 0)."""
    memory: dict[tuple[int, int], int] = {}
    for address, words in dump.items():
        function = 3 if address >= 0x5000 else 4  # only ABB uses holding registers, all above 0x5000
        for i, word in enumerate(words):
            memory[(function, address + i)] = word
    values: dict[str, float | None] = {}
    for request in plan_reads(load_map(model)):
        words = [memory.get((request.function, request.address + i), 0) for i in range(request.count)]
        values.update(decode_batch(request, words))
    return values, build_sample(values, 1.0)


def test_every_model_is_bundled_and_reads_fit_the_limits() -> None:
    assert set(MODELS) <= set(available_maps())
    for model in MODELS:
        register_map = load_map(model)
        assert register_map.model == model
        plan = plan_reads(register_map)
        assert all(r.count <= register_map.max_registers_per_read for r in plan)
        assert len(plan) <= 2, f"{model}: {len(plan)} frames per poll"


def test_sdm120_float32_big_endian() -> None:
    values, sample = decode_dump(
        "sdm120",
        {
            0x00: [0x4366, 0x0000],  # 230.0 V
            0x06: [0x40A0, 0x0000],  # 5.0 A
            0x0C: [0x448F, 0xC000],  # 1150.0 W
            0x46: [0x4248, 0x0000],  # 50.0 Hz
            0x48: [0x4148, 0x0000],  # 12.5 kWh
        },
    )
    assert sample.energy_import_wh == 12_500.0 and sample.power_w == 1150.0
    assert sample.voltage_v == (230.0, None, None) and sample.current_a == (5.0, None, None)
    assert values["frequency"] == 50.0


def test_abb_b23_holding_integers_with_scales_and_not_available() -> None:
    values, sample = decode_dump(
        "abb_b23",
        {
            0x5000: [0x0000, 0x0000, 0x0001, 0xE240],  # import u64 123456 x0.01 kWh
            0x5004: [0xFFFF] * 4,  # export: not available
            0x5B00: [0x0000, 0x08FD, 0xFFFF, 0xFFFF, 0x0000, 0x08FC],  # 230.1 V, n/a, 230.0 V
            0x5B0C: [0x0000, 0x0640],  # 16.00 A
            0x5B0E: [0xFFFF, 0xFFFF],  # n/a
            0x5B14: [0xFFFF, 0xC568],  # s32 -15000 x0.01 W
            0x5B2C: [0x1386],  # u16 4998 x0.01 Hz
        },
    )
    assert sample.energy_import_wh == pytest.approx(1_234_560.0)
    assert values["energy_export"] is None
    assert sample.voltage_v == (pytest.approx(230.1), None, pytest.approx(230.0))
    assert sample.current_a[0] == pytest.approx(16.0) and sample.current_a[1] is None
    assert sample.power_w == pytest.approx(-150.0)
    assert values["frequency"] == pytest.approx(49.98)


def test_abb_b23_all_ff_energy_is_an_incomplete_reading() -> None:
    with pytest.raises(ValueError, match="energy_import"):
        decode_dump("abb_b23", {0x5000: [0xFFFF] * 4})


def test_em340_low_word_first() -> None:
    values, sample = decode_dump(
        "em340",
        {
            0x00: [0x0901, 0x0000],  # 2305 x0.1 V
            0x0C: [0x3E80, 0x0000],  # 16000 x0.001 A
            0x28: [0xAF40, 0x0001],  # 0x0001AF40 = 110400 x0.1 W (high word second)
            0x34: [0xE240, 0x0001],  # 123456 x0.1 kWh
            0x37: [500],  # int16 x0.1 Hz
        },
    )
    assert sample.voltage_v[0] == pytest.approx(230.5)
    assert sample.current_a[0] == pytest.approx(16.0)
    assert sample.power_w == pytest.approx(11_040.0)
    assert sample.energy_import_wh == pytest.approx(12_345_600.0)
    assert values["frequency"] == pytest.approx(50.0)
    _, negative = decode_dump("em340", {0x28: [0xCFC7, 0xFFFF], 0x34: [1, 0]})  # -12345 x0.1 W
    assert negative.power_w == pytest.approx(-1234.5)


# ------------------------------------------------------------------ OCMF helpers


def test_signing_block_of_the_ocmf_map() -> None:
    layout = load_map("ocmf").signing
    assert layout is not None and layout.function == 3
    assert (layout.command, layout.status, layout.public_key, layout.record) == (0x1000, 0x1011, 0x1020, 0x1100)
    assert load_map("sdm630").signing is None


@pytest.mark.parametrize(
    ("signing", "message"),
    [
        ({"scheme": "pkcs", "base": 0x1000}, "scheme"),
        ({"scheme": "ocmf"}, "base"),
        ({"scheme": "ocmf", "base": 0xFF00}, "does not fit"),
        ({"scheme": "ocmf", "base": 0x1000, "function": 4}, "holding"),
    ],
)
def test_bad_signing_blocks_are_map_errors(signing: dict[str, object], message: str) -> None:
    data = {
        "meter": {"model": "x"},
        "signing": signing,
        "registers": {"power": {"address": 0, "unit": "W"}, "energy_import": {"address": 2, "unit": "kWh"}},
    }
    with pytest.raises(MapError, match=message):
        parse_map(data)


def test_text_in_registers() -> None:
    assert text_to_words("ABC", 2) == [0x4142, 0x4300]
    assert words_to_bytes([0x4142, 0x4300]) == b"ABC"
    assert words_to_bytes([0x4142, 0x4300], 4) == b"ABC\0"
    assert len(transaction_ref_words("tx-1")) == 16
    for bad in ("", "x" * 33, "tx\n1", "tä"):
        with pytest.raises(ValueError):
            transaction_ref_words(bad)


def test_sign_then_verify_and_tampering_is_caught() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = {"FV": "1.0", "ID": "tx|1", "RD": [{"TX": "B", "RV": 12.3456, "RU": "kWh"}]}
    record = sign_ocmf(payload, key)
    assert record.startswith("OCMF|{") and record.count("|") == 3  # one '|' inside the payload
    parsed = parse_ocmf(record)
    assert parsed.payload == payload and parsed.reading["TX"] == "B"
    assert parsed.signature["SA"] == "ECDSA-secp256r1-SHA256"
    assert verify_ocmf(record, public_key_der(key))
    assert not verify_ocmf(record.replace("12.3456", "99.3456"), public_key_der(key))
    other = ec.generate_private_key(ec.SECP256R1())
    assert not verify_ocmf(record, public_key_der(other))


@pytest.mark.parametrize("record", ["", "OCMF|{}", "XXXX|{}|{}", "OCMF|[1]|{}", "OCMF|{}|{}", "OCMF|{|{\"SD\":\"00\"}"])
def test_malformed_ocmf_records(record: str) -> None:
    with pytest.raises(OcmfError):
        parse_ocmf(record)
