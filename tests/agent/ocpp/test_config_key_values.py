"""Integer configuration keys take ASCII digits only (issue 11 item 18), over the real websocket.

OCPP 1.6 section 9 types these keys "integer"; the JSON value of ChangeConfiguration.req is a string
(CiString500) that has to parse as one. Python's int() also takes other scripts' digits (Arabic-Indic
3600 is 3600), so a CSMS could set values nobody reading the configuration would recognise. Section 5.3:
a value the charge point cannot accept is answered Rejected, and the key keeps its value.
"""

from __future__ import annotations

import pytest

from tests.agent.ocpp.conftest import CP, Octt


async def change(octt: Octt, key: str, value: str) -> str:
    answer = await octt.csms.send(CP, "ChangeConfiguration", {"key": key, "value": value})
    return str(answer["status"])


async def value_of(octt: Octt, key: str) -> str:
    answer = await octt.csms.send(CP, "GetConfiguration", {"key": [key]})
    return str(answer["configurationKey"][0]["value"])


@pytest.mark.parametrize(
    "value",
    [
        "\u0663\u0666\u0660\u0660",  # ARABIC-INDIC DIGIT THREE, SIX, ZERO, ZERO
        "\uff13\uff16\uff10\uff10",  # FULLWIDTH DIGITs
        "36\u0966",  # ASCII and a DEVANAGARI DIGIT ZERO
        "\U0001d7d1\U0001d7d4\U0001d7ce\U0001d7ce",  # MATHEMATICAL BOLD DIGITs
        "+3600",  # only '-' may lead an integer
        "3_600",  # int() takes underscores too
    ],
)
async def test_integer_keys_reject_non_ascii_digits(octt: Octt, value: str) -> None:
    await octt.start_agent()
    await octt.booted()
    assert await value_of(octt, "HeartbeatInterval") == "300"
    assert await change(octt, "HeartbeatInterval", value) == "Rejected"
    assert await value_of(octt, "HeartbeatInterval") == "300"
    assert octt.agent is not None and octt.agent.service is not None
    assert octt.agent.service.store.get_int("HeartbeatInterval") == 300
    # The same number in ASCII digits is fine, and so is the list key's connector number.
    assert await change(octt, "HeartbeatInterval", "3600") == "Accepted"
    assert await value_of(octt, "HeartbeatInterval") == "3600"


async def test_connector_numbers_in_lists_are_ascii_too(octt: Octt) -> None:
    await octt.start_agent()
    await octt.booted()
    assert await change(octt, "ConnectorPhaseRotation", "\u0661.RST") == "Rejected"
    assert await change(octt, "ConnectorPhaseRotation", "1.RST") == "Accepted"
    assert await value_of(octt, "ConnectorPhaseRotation") == "1.RST"
