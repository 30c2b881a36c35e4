"""A PN532 on a pty (HSU): answers each command with ACK and its response, like the chip. ``tap(uid)``
holds a card in the field for a moment; ``silent`` makes it ignore everything."""

from __future__ import annotations

import time

from drivers.serial import pn532_codec as codec
from simulator.pty import PtyPeripheral

FIRMWARE = b"\x32\x01\x06\x07"  # PN532, firmware 1.6, supports ISO 14443A/B and ISO 18092
HOLD_S = 0.6  # how long a tapped card stays in the field


class Pn532Emulator(PtyPeripheral):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = codec.Pn532Decoder()
        self.commands: list[int] = []  # command codes received, in order (for tests)
        self.configured = False
        self._card: tuple[bytes, float] | None = None  # UID and when it leaves the field

    def tap(self, uid_hex: str, hold_s: float = HOLD_S) -> None:
        """Hold an ISO 14443A card (4, 7 or 10 byte UID, hex) in the field for ``hold_s`` seconds."""
        uid = bytes.fromhex(uid_hex)
        if len(uid) not in (4, 7, 10):
            raise ValueError(f"ISO 14443A UIDs have 4, 7 or 10 bytes, got {len(uid)}")
        self._card = (uid, time.monotonic() + hold_s)

    def feed(self, data: bytes) -> None:
        if self.silent:
            return
        for item in self.decoder.feed(data):
            if isinstance(item, codec.Frame) and item.tfi == codec.TFI_HOST and item.code is not None:
                self._answer(item.code, item.data[1:])

    def _answer(self, code: int, params: bytes) -> None:
        self.commands.append(code)
        if code == codec.CMD_GET_FIRMWARE_VERSION:
            payload = FIRMWARE
        elif code == codec.CMD_SAM_CONFIGURATION:
            self.configured, payload = True, b""
        elif code == codec.CMD_RF_CONFIGURATION:
            payload = b""
        elif code == codec.CMD_IN_LIST_PASSIVE_TARGET and params[1:2] == bytes([codec.BRTY_106_TYPE_A]):
            payload = codec.encode_targets(self._cards_in_field())
        else:
            self.write_raw(codec.ACK + codec.encode_frame(codec.TFI_PN532, b"\x7f"))  # syntax error frame
            return
        self.write_raw(codec.ACK + codec.response(code, payload))

    def _cards_in_field(self) -> list[codec.TypeATarget]:
        if self._card is None or time.monotonic() > self._card[1]:
            self._card = None
            return []
        uid = self._card[0]
        return [codec.TypeATarget(1, 0x0044 if len(uid) == 7 else 0x0004, 0x00 if len(uid) == 7 else 0x08, uid)]
