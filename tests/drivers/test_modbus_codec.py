"""Register map loading, read planning and decoding: pure functions, no I/O."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import (
    DATA_TYPES,
    IncompleteReading,
    MapError,
    RegisterSpec,
    available_maps,
    build_sample,
    decode_batch,
    decode_register,
    encode_register,
    load_map,
    parse_map,
    plan_reads,
)


def spec(**overrides: Any) -> RegisterSpec:
    fields: dict[str, Any] = dict(
        quantity="power", address=0, function=4, data_type="float32", word_order="big",
        byte_order="big", scale=1.0, unit="W", not_available=(),
    )  # fmt: skip
    fields.update(overrides)
    return RegisterSpec(**fields)


def words(hex_text: str) -> list[int]:
    raw = bytes.fromhex(hex_text)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def minimal_map(**registers: dict[str, Any]) -> dict[str, Any]:
    return {
        "meter": {"model": "test", "max_registers_per_read": 80, "max_gap": 80},
        "registers": {
            "energy_import": {"address": 0x48, "unit": "kWh"},
            "power": {"address": 0x34, "unit": "W"},
            **registers,
        },
    }


# ------------------------------------------------------------------ the bundled SDM630 map


def test_sdm630_map_is_bundled_and_matches_the_datasheet() -> None:
    assert "sdm630" in available_maps()
    sdm = load_map("sdm630")
    expected = {
        "voltage_l1": 0x00, "voltage_l2": 0x02, "voltage_l3": 0x04,
        "current_l1": 0x06, "current_l2": 0x08, "current_l3": 0x0A,
        "power_l1": 0x0C, "power_l2": 0x0E, "power_l3": 0x10, "power": 0x34,
        "frequency": 0x46, "energy_import": 0x48, "energy_export": 0x4A, "energy_total": 0x156,
        "energy_import_l1": 0x15A, "energy_import_l2": 0x15C, "energy_import_l3": 0x15E,
    }  # fmt: skip
    assert {r.quantity: r.address for r in sdm.registers} == expected
    assert {(r.function, r.data_type, r.word_order, r.byte_order) for r in sdm.registers} == {
        (4, "float32", "big", "big")
    }
    assert sdm.spec("energy_import") is not None and sdm.spec("energy_import").unit == "kWh"  # type: ignore[union-attr]


def test_sdm630_plan_is_two_reads_of_at_most_80_registers() -> None:
    plan = plan_reads(load_map("sdm630"))
    assert [(r.function, r.address, r.count) for r in plan] == [(4, 0x00, 0x4C), (4, 0x156, 10)]
    assert all(r.count <= 80 for r in plan)


def test_decode_known_sdm630_dump_into_a_sample_in_wh() -> None:
    plan = plan_reads(load_map("sdm630"))
    first = [0] * plan[0].count
    dump = {
        0x00: "43660000", 0x02: "43678000", 0x04: "43660000",  # 230.0 / 231.5 / 230.0 V
        0x06: "41800000", 0x08: "41800000", 0x0A: "00000000",  # 16 / 16 / 0 A
        0x0C: "45660000", 0x34: "462c8000",  # 3680 W on L1, 11040 W total
        0x46: "42480000", 0x48: "41480000",  # 50 Hz, 12.5 kWh import
    }  # fmt: skip
    for address, hex_text in dump.items():
        first[address : address + 2] = words(hex_text)
    values = decode_batch(plan[0], first)
    assert values["voltage_l2"] == 231.5
    assert values["frequency"] == 50.0
    assert values["energy_import"] == 12_500.0  # kWh on the wire, Wh in the sample
    sample = build_sample(values, timestamp=1234.0)
    assert sample.energy_import_wh == 12_500.0
    assert sample.power_w == 11_040.0
    assert sample.voltage_v == (230.0, 231.5, 230.0)
    assert sample.current_a == (16.0, 16.0, 0.0)
    assert sample.timestamp == 1234.0


def test_sample_without_energy_or_power_is_incomplete() -> None:
    with pytest.raises(IncompleteReading, match="energy_import"):
        build_sample({"energy_import": None, "power": 10.0}, 0.0)
    with pytest.raises(IncompleteReading, match="power"):
        build_sample({"energy_import": 1.0}, 0.0)


def test_batch_of_wrong_length_is_rejected() -> None:
    plan = plan_reads(load_map("sdm630"))
    with pytest.raises(ValueError, match="returned"):
        decode_batch(plan[0], [0] * 3)


# ------------------------------------------------------------------ data types, orders, not available


def test_word_and_byte_orders() -> None:
    # 1234.5 as float32 is 449A 5000
    assert decode_register(spec(), words("449a5000")) == 1234.5
    assert decode_register(spec(word_order="little"), words("5000449a")) == 1234.5
    assert decode_register(spec(byte_order="little"), words("9a440050")) == 1234.5
    assert decode_register(spec(word_order="little", byte_order="little"), words("00509a44")) == 1234.5


def test_integer_types_with_scale_and_unit() -> None:
    # ABB B23 style: u32 x0.1 V, s32 x0.01 W, u64 x0.01 kWh
    assert decode_register(spec(quantity="voltage_l1", data_type="uint32", scale=0.1, unit="V"), words("000008fc")) == (
        pytest.approx(230.0)
    )
    assert decode_register(spec(data_type="int32", scale=0.01), words("ffffcfc7")) == pytest.approx(-123.45)
    energy = spec(quantity="energy_import", data_type="uint64", scale=0.01, unit="kWh")
    assert decode_register(energy, words("000000000001e240")) == pytest.approx(1_234_560.0)  # 1234.56 kWh
    # Carlo Gavazzi EM340 style: int32 low word first, x0.1 W
    em340 = spec(data_type="int32", word_order="little", scale=0.1)
    assert decode_register(em340, words("cfc7ffff")) == pytest.approx(-1234.5)
    assert decode_register(spec(data_type="int16", scale=0.1, quantity="frequency", unit="Hz"), [500]) == 50.0


def test_not_available_patterns() -> None:
    abb = spec(data_type="uint32", scale=0.1, unit="V", quantity="voltage_l1", not_available=(b"\xff" * 4,))
    assert decode_register(abb, [0xFFFF, 0xFFFF]) is None
    assert decode_register(abb, [0xFFFF, 0xFFFE]) == pytest.approx(429496729.4)
    # non-finite floats are never values
    assert decode_register(spec(), words("7fc00000")) is None
    assert decode_register(spec(), words("7f800000")) is None


def test_not_available_pattern_in_a_map_file() -> None:
    data = minimal_map(voltage_l1={"address": 0, "type": "uint32", "scale": 0.1, "unit": "V"})
    data["defaults"] = {"not_available": "FF"}
    parsed = parse_map(data)
    voltage = parsed.spec("voltage_l1")
    assert voltage is not None and voltage.not_available == (b"\xff" * 4,)
    assert decode_register(voltage, [0xFFFF, 0xFFFF]) is None
    assert encode_register(voltage, None) == [0xFFFF, 0xFFFF]


@given(
    data_type=st.sampled_from(sorted(DATA_TYPES)),
    word_order=st.sampled_from(["big", "little"]),
    byte_order=st.sampled_from(["big", "little"]),
    raw=st.integers(min_value=-(2**15), max_value=2**15 - 1),
)
def test_encode_then_decode_round_trips(data_type: str, word_order: str, byte_order: str, raw: int) -> None:
    if data_type.startswith("uint"):
        raw = abs(raw)
    register = spec(data_type=data_type, word_order=word_order, byte_order=byte_order, scale=0.1)
    value = raw * 0.1
    encoded = encode_register(register, value)
    assert len(encoded) == register.width
    decoded = decode_register(register, encoded)
    assert decoded is not None and math.isclose(decoded, value, rel_tol=1e-6, abs_tol=1e-6)


# ------------------------------------------------------------------ planning


def test_plan_splits_at_80_registers_and_separates_function_codes() -> None:
    regs = {f"power_l{i}": {"address": 0x100 + 20 * i, "unit": "W"} for i in range(1, 4)}
    regs.update({"voltage_l1": {"address": 0x10, "unit": "V", "function": 3}})
    data = minimal_map(**regs)
    data["registers"]["energy_import"]["address"] = 0x100 + 120  # 0x178
    plan = plan_reads(parse_map(data))
    assert all(r.count <= 80 for r in plan)
    assert [(r.function, r.address, r.count) for r in plan] == [
        (3, 0x10, 2),
        (4, 0x34, 2),  # 0x34 .. 0x114 would be 226 registers
        (4, 0x114, 42),  # power_l1..3 at 0x114/0x128/0x13C, gaps read along
        (4, 0x178, 2),  # 0x114 .. 0x17A would be 102 registers
    ]
    covered = {q.quantity for r in plan for q in r.registers}
    assert covered == set(data["registers"])


@pytest.mark.parametrize(("energy_address", "reads"), [(78, 1), (79, 2)])
def test_plan_limit_is_exactly_80_registers(energy_address: int, reads: int) -> None:
    data = minimal_map()
    data["registers"]["power"]["address"] = 0
    data["registers"]["energy_import"]["address"] = energy_address
    plan = plan_reads(parse_map(data))
    assert len(plan) == reads
    assert max(r.count for r in plan) <= 80


def test_plan_respects_max_gap() -> None:
    data = minimal_map()
    data["meter"]["max_gap"] = 4  # energy 0x48 and power 0x34 are 18 registers apart
    plan = plan_reads(parse_map(data))
    assert [(r.address, r.count) for r in plan] == [(0x34, 2), (0x48, 2)]
    data["meter"]["max_gap"] = 18
    assert [(r.address, r.count) for r in plan_reads(parse_map(data))] == [(0x34, 22)]


@given(addresses=st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=40, unique=True))
def test_plan_always_covers_every_register_within_the_limit(addresses: list[int]) -> None:
    regs = {f"power_x{i}": {"address": a, "unit": "W"} for i, a in enumerate(addresses)}
    parsed = parse_map(minimal_map(**regs))
    plan = plan_reads(parsed)
    assert all(1 <= r.count <= 80 for r in plan)
    for request in plan:
        for register in request.registers:
            assert request.address <= register.address and register.end <= request.address + request.count
    assert sorted(q.quantity for r in plan for q in r.registers) == sorted(r.quantity for r in parsed.registers)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"power": {"address": 0x34, "unit": "V"}}, "not a unit of W"),
        ({"power": {"address": 0x34, "unit": "W", "type": "float16"}}, "type"),
        ({"power": {"address": 0x34, "unit": "W", "function": 6}}, "expected 3 or 4"),
        ({"power": {"address": 0x34, "unit": "W", "word_order": "middle"}}, "word_order"),
        ({"power": {"address": 0x34, "unit": "W", "scale": 0}}, "scale"),
        ({"power": {"address": 0x34, "unit": "W", "not_available": "FFF"}}, "not hex"),
        ({"power": {"address": 0x34, "unit": "W", "not_available": "FFFF"}}, "1 or 4 bytes"),
        ({"power": {"unit": "W"}}, "address"),
        ({"power": {"address": 70000, "unit": "W"}}, "outside"),
    ],
)
def test_invalid_entries_name_the_register(patch: dict[str, Any], message: str) -> None:
    data = minimal_map()
    data["registers"].update(patch)
    with pytest.raises(MapError, match=message):
        parse_map(data, source="bad.toml")


def test_map_needs_energy_and_power() -> None:
    with pytest.raises(MapError, match="energy_import"):
        parse_map({"meter": {"model": "x"}, "registers": {"power": {"address": 0, "unit": "W"}}})


def test_unknown_model_lists_known_maps() -> None:
    with pytest.raises(MapError, match="sdm630"):
        load_map("nosuchmeter")
    with pytest.raises(MapError, match="invalid"):
        load_map("../etc/passwd")
