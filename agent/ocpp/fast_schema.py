"""The fast path of the OCPP JSON-schema checks (``agent.ocpp.v16.rpc.schema_violation``).

The library validates with jsonschema's Draft4Validator, which walks the schema and resolves every ``$ref``
per value: ~2 ms for a 24-period GetCompositeSchedule reply, a fifth of the network side's CPU under a CSMS
asking back to back (bench/safety_latency.py --hostile --ocpp 2.0.1). fastjsonschema compiles each schema
once to Python code, ~15x faster. It only says "valid": anything it does not accept -- or cannot compile --
goes to jsonschema as before, which decides and words the error (the CALLERROR code comes from the keyword
that failed), so the answers are the same. For that, the schema is compiled as Draft 4 (as the library
validates every version), without format checks (jsonschema checks none), and a schema with ``multipleOf``
only where the caller validates with Decimals (fastjsonschema divides ``Decimal(repr(x))``, which is what
reading the payload with ``parse_float=Decimal`` gives; a float division would accept 0.7 as a multiple of
0.1 where the float-based check refuses it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import ocpp
from ocpp.messages import MessageType

_SCHEMA_ROOT = Path(ocpp.__file__).resolve().parent
_DRAFT4 = "http://json-schema.org/draft-04/schema#"


@functools.cache
def fast_validator(version: str, message_type_id: int, action: str, decimal: bool) -> Callable[[Any], Any] | None:
    """The compiled check of one message's schema (raises on anything it does not accept), or None when
    there is no fast path for it (no such schema, a ``multipleOf`` outside a Decimal check, not compilable)."""
    name = action
    if message_type_id == MessageType.CallResult:
        name += "Response"
    elif version != "1.6":
        name += "Request"
    path = _SCHEMA_ROOT / f"v{version.replace('.', '')}" / "schemas" / f"{name}.json"
    try:
        text = path.read_text(encoding="utf-8-sig")  # the 2.0.1 schemas start with a BOM
        if "multipleOf" in text and not decimal:
            return None
        schema = json.loads(text)
        schema["$schema"] = _DRAFT4
        # use_default=False: by default fastjsonschema writes the schema's defaults into the payload it checks
        # (a 2.0.1 TransactionEvent went out with "offline": false, "multiplier": 0 it was never given).
        validate: Callable[[Any], Any] = fastjsonschema.compile(schema, use_formats=False, use_default=False)
    except Exception:  # no fast path: jsonschema decides, as before
        return None
    return validate


def surely_valid(version: str, message_type_id: int, action: str, payload: Any, *, decimal: bool) -> bool:
    """True when ``payload`` passes the schema; False when it may not (ask jsonschema)."""
    validate = fast_validator(version, message_type_id, action, decimal)
    if validate is None:
        return False
    try:
        validate(payload)
    except Exception:  # JsonSchemaValueException, or a value it cannot compute with
        return False
    return True
