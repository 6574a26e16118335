"""A small keep-alive HTTP/1.1 client for the load: cheap enough that the client
does not dominate the 2 cores it shares with the proxies it measures."""

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes
    started: float
    first_byte: float  # first body byte
    ended: float
    chunk_times: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.ended - self.started

    @property
    def ttfb(self) -> float:
        return self.first_byte - self.started


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
            self._writer = None

    async def post(self, path: str, payload: dict, headers: dict | None = None) -> Reply:
        if self._writer is None:
            await self._connect()
        body = json.dumps(payload).encode()
        head = f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        started = time.perf_counter()
        self._writer.write(head.encode() + b"\r\n" + body)
        await self._writer.drain()
        reader = self._reader
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        response_headers = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        parts, times = [], []
        if response_headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                times.append(time.perf_counter())
                await reader.readexactly(2)
        elif "content-length" in response_headers:
            parts.append(await reader.readexactly(int(response_headers["content-length"])))
            times.append(time.perf_counter())
        else:  # close-delimited
            parts.append(await reader.read())
            times.append(time.perf_counter())
            await self.close()
        if response_headers.get("connection", "").lower() == "close":
            await self.close()
        ended = time.perf_counter()
        return Reply(status, response_headers, b"".join(parts), started, times[0] if times else ended, ended, times)
