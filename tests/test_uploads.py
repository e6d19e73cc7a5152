import os
import time

from legend_core.data.uploads import prune_uploads, save_upload


def test_save_upload_keeps_the_name_once_and_prunes_old_uploads(tmp_path):
    folder = tmp_path / "uploads"
    path = save_upload("id-1", "../../etc/pairs.jsonl", b'{"a": 1}\n', folder)
    assert path == folder / "id-1" / "pairs.jsonl" and path.read_bytes() == b'{"a": 1}\n'
    assert save_upload("id-1", "pairs.jsonl", b"other", folder).read_bytes() == b'{"a": 1}\n'

    day_old = time.time() - 2 * 24 * 3600
    os.utime(folder / "id-1", (day_old, day_old))
    save_upload("id-2", "new.csv", b"x", folder)
    assert sorted(p.name for p in folder.iterdir()) == ["id-2"]
    assert prune_uploads(folder, max_age_s=0, keep="id-2") == 0
    assert prune_uploads(folder, max_age_s=-1) == 1 and not any(folder.iterdir())
    assert prune_uploads(tmp_path / "never-made") == 0
