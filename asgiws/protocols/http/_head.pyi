def parse_head(
    data: bytes | bytearray | memoryview, start: int, end: int, max_target: int, max_fields_size: int,
    max_fields: int, max_body: int, /,
) -> tuple[int, str, bytes, bytes, str, list[tuple[bytes, bytes]], bool, bool, int | None, bytes] | None: ...
