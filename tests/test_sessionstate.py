"""core.sessionstate: what a collector pins on disk reads back as written, and a damaged file
is an empty record, never an exception."""

from __future__ import annotations

from pathlib import Path

from roguewatch.core import sessionstate


def test_the_pinned_object_ids_read_back_and_bad_ones_are_dropped(tmp_path: Path) -> None:
    rec = sessionstate.Pinned(
        [sessionstate.PinnedSession(session=7, root=42, allow=["127.0.0.1/32"])],
        [(42, 1000)], clean=False, collector=99, pins={"map__sessions": 12, "link__a__b": 13},
    )  # fmt: skip
    sessionstate.write(str(tmp_path), rec)
    back = sessionstate.read(str(tmp_path))
    assert back.exists and not back.clean and back.collector == 99
    assert back.pins == {"map__sessions": 12, "link__a__b": 13}
    assert back.sessions[0].allow == ["127.0.0.1/32"]
    path = Path(sessionstate.path_in(str(tmp_path)))
    path.write_text(path.read_text().replace('"map__sessions": 12', '"map__sessions": "x"'))
    assert sessionstate.read(str(tmp_path)).pins == {"link__a__b": 13}
    path.write_text("{not json")
    assert sessionstate.read(str(tmp_path)) == sessionstate.Pinned()
