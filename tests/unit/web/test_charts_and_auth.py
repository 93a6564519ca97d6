import re

from loraops.web.auth import DashboardKeys
from loraops.web.charts import line_chart_svg


def test_chart_draws_one_polyline_per_series_within_the_canvas():
    svg = line_chart_svg({"train": [(0, 2.0), (10, 1.0), (20, 0.5)], "val": [(10, 1.2), (20, 0.9)]}, "Loss")
    lines = re.findall(r'<polyline[^>]*data-series="(\w+)"[^>]*points="([^"]+)"', svg)
    assert [name for name, _ in lines] == ["train", "val"]
    for _, pts in lines:
        for x, y in (map(float, p.split(",")) for p in pts.split()):
            assert 0 <= x <= 560 and 0 <= y <= 220


def test_chart_puts_lower_values_lower_on_the_page():
    svg = line_chart_svg({"s": [(0, 5.0), (1, 1.0)]}, "t")
    (pts,) = re.findall(r'points="([^"]+)"', svg)
    (_, y_high), (_, y_low) = (map(float, p.split(",")) for p in pts.split())
    assert y_high < y_low  # SVG y grows downwards


def test_empty_chart_says_so_and_escapes_titles():
    svg = line_chart_svg({}, "<script>")
    assert "no data yet" in svg and "<script>" not in svg


def test_keys_map_to_roles():
    keys = DashboardKeys(admin_keys=["adm"], read_keys=["ro"])
    assert (keys.role_for("adm"), keys.role_for("ro"), keys.role_for("nope")) == ("admin", "read", None)


def test_cookie_is_signed_and_expires():
    keys = DashboardKeys(admin_keys=["sk-admin-7f3a"])
    token = keys.issue("admin", now=1000)
    assert keys.verify(token, now=1001) == "admin"
    assert keys.verify(token.replace("admin", "read"), now=1001) is None  # forged role
    assert keys.verify(token, now=1000 + 9 * 3600) is None               # expired
    assert DashboardKeys(admin_keys=["sk-admin-7f3a"]).verify(token, now=1001) is None  # other process secret
    assert "sk-admin-7f3a" not in token
