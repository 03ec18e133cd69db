"""The inspection page in a real browser (Debian's Chromium driven by Playwright) against a real
server: upload a real photo, see its class on the page, find it in the history and statistics.
A screenshot of each view is saved under test-artifacts/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Chromium is missing: make test installs Debian's chromium package"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    yield opened
    context.close()
    assert errors == []  # no script errors, no CSP violations


def test_upload_see_class_then_find_it_in_history_and_stats(
    page: Page,
    server: tuple[object, str, str],
    photos: Path,
) -> None:
    _, base, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Classify images")).to_be_visible()

    page.locator("#file-input").set_input_files([photos / "coffee.png", photos / "camera.png"])
    cards = page.locator("#results .card")
    expect(cards).to_have_count(2)
    expect(page.locator(".card[data-top-class='espresso']")).to_be_visible(timeout=30_000)
    expect(page.locator(".card[data-top-class='tripod']")).to_be_visible(timeout=30_000)
    coffee = page.locator(".card[data-top-class='espresso']")
    expect(coffee.get_by_role("img", name="espresso: 95.1%")).to_be_visible()
    expect(coffee).to_contain_text("efficientnet_lite0")
    page.screenshot(path=str(ARTIFACTS / "classify.png"), full_page=True)

    page.get_by_role("tab", name="History").click()
    rows = page.locator("#history-table tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#history-table")).to_contain_text("espresso")
    page.get_by_role("textbox", name="Class").fill("espresso")
    page.locator("#history-filters").get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("coffee.png")
    page.screenshot(path=str(ARTIFACTS / "history.png"), full_page=True)

    page.get_by_role("tab", name="Statistics").click()
    expect(page.locator("#stats-total")).to_have_text("2 predictions")
    expect(page.locator("#chart-classes li")).to_have_count(2)
    page.screenshot(path=str(ARTIFACTS / "stats.png"), full_page=True)


def test_asks_for_an_api_key_when_the_server_needs_one(
    page: Page, photos: Path, tmp_path: Path
) -> None:
    import subprocess

    from tests.support import VISINSPECT, environment, free_port, wait_ready

    port = free_port()
    process = subprocess.Popen(
        [VISINSPECT, "serve", "--port", str(port)],
        env=environment(
            DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}", API_KEYS="s3cret-key-123456"
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)  # type: ignore[arg-type]
        page.goto(base + "/")
        page.locator("#file-input").set_input_files(photos / "coffee.png")
        expect(page.get_by_role("alert")).to_contain_text("needs an API key")
        expect(page.locator("#results .card .error")).to_contain_text("missing_api_key")

        page.get_by_label("API key").fill("s3cret-key-123456")
        page.get_by_label("API key").press("Enter")
        page.get_by_label("API key").dispatch_event("change")
        page.locator("#file-input").set_input_files(photos / "camera.png")
        expect(page.locator(".card[data-top-class='tripod']")).to_be_visible(timeout=30_000)
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_review_with_the_keyboard_then_see_the_quality(
    page: Page, server: tuple[object, str, str], photos: Path
) -> None:
    """The review queue, least confident first: `c` for correct; `w`, a class from the picker and
    Enter for wrong; then the Quality view shows what the two reviews measured."""
    from visinspect.client import Client

    _, base, _ = server
    with Client(base) as client:
        made = [client.predict(photos / name) for name in ("coffee.png", "camera.png")]
    first, second = sorted(made, key=lambda p: p.predictions[0].confidence)
    page.goto(base + "/")
    page.get_by_role("tab", name="Review").click()
    expect(page.locator("#queue-info")).to_have_text("2 waiting for review")
    expect(page.locator("#review-title")).to_contain_text(f"#{first.id}")
    # The kept images: the one under review, and the queue's thumbnails.
    expect(page.locator("#review-image")).to_be_visible()
    expect(page.locator("#review-image")).to_have_attribute(
        "alt", f"The image of prediction #{first.id}"
    )
    longer_side = "i => Math.max(i.naturalWidth, i.naturalHeight)"
    assert page.locator("#review-image").evaluate(longer_side) == 256  # IMAGE_THUMBNAIL_PX
    strip = page.locator("#queue-strip button")
    expect(strip).to_have_count(2)
    expect(strip.first).to_have_attribute("aria-current", "true")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#queue-strip img')].every(i => i.naturalWidth > 0)"
    )
    page.screenshot(path=str(ARTIFACTS / "review.png"), full_page=True)

    page.keyboard.press("c")
    expect(page.locator("#queue-info")).to_have_text("1 waiting for review")
    expect(page.locator("#review-title")).to_contain_text(f"#{second.id}")
    page.keyboard.press("w")
    expect(page.locator("#true-class")).to_be_focused()
    page.locator("#true-class").fill("cup")
    page.locator("#true-class").press("Enter")
    expect(page.locator("#queue-info")).to_have_text("No predictions wait for review.")
    expect(page.locator("#review-status")).to_contain_text(f"#{second.id} reviewed: wrong (cup)")

    page.get_by_role("tab", name="Quality").click()
    expect(page.locator("#quality-total")).to_have_text("2 reviewed, 1 correct: accuracy 50.0%")
    expect(page.locator("#chart-accuracy-classes li")).to_have_count(2)
    confusion = page.locator("#confusions tbody tr")
    expect(confusion).to_have_count(1)
    expect(confusion).to_contain_text(second.predictions[0].class_name)
    expect(confusion).to_contain_text("cup")
    page.screenshot(path=str(ARTIFACTS / "quality.png"), full_page=True)

    page.get_by_role("tab", name="Drift").click()
    expect(page.locator("#drift-verdict")).to_contain_text(
        "No verdict yet: not enough predictions: 2 recent and 0 in the reference"
    )
    expect(page.locator("#chart-drift li")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "drift.png"), full_page=True)
    with Client(base) as client:
        assert client.prediction(first.id).review.verdict == "correct"  # type: ignore[union-attr]
        assert client.prediction(second.id).review.true_class_name == "cup"  # type: ignore[union-attr]


def test_label_the_queue_from_the_keyboard_then_train_and_promote(
    page: Page, server: tuple[object, str, str], photos: Path
) -> None:
    """Review view: with a label set chosen, a digit labels the image under review with that
    class and moves on. Teach view: the counts per class, Train, then Promote."""
    from tests.api.test_teaching import OBJECTS, TEXTURES
    from visinspect.client import Client
    from visinspect.offline.photos import crops

    _, base, _ = server
    labelled: dict[int, str] = {}
    with Client(base) as client:
        client.create_label_set("surfaces", ["texture", "object"])
        for names, class_name in ((TEXTURES, "texture"), (OBJECTS[:3], "object")):
            for name in names:
                for data in crops(photos / name)[:2]:
                    prediction = client.predict(data)
                    client.label(prediction.id, "surfaces", class_name)
                    labelled[prediction.id] = class_name
        client.predict(photos / "coffee.png")  # one more, not labelled
        queued = client.predictions(reviewed=False, limit=1).items[0]
    labelled[queued.id] = "object"  # what the keyboard gives it below: its latest label
    expected = {c: sum(v == c for v in labelled.values()) for c in ("texture", "object")}
    page.goto(base + "/")
    page.get_by_role("tab", name="Review").click()
    expect(page.locator("#review-title")).to_contain_text(f"#{queued.id}")
    page.get_by_label("Label into").select_option("surfaces")
    expect(page.locator("#label-keys li")).to_have_count(2)
    page.keyboard.press("2")
    expect(page.locator("#review-status")).to_contain_text(
        f"#{queued.id} labelled object in surfaces"
    )
    expect(page.locator("#review-title")).not_to_contain_text(f"#{queued.id}")

    page.get_by_role("tab", name="Teach").click()
    expect(page.locator("#chart-labels li")).to_have_count(2)
    page.get_by_role("button", name="Train the next version").click()
    expect(page.locator("#teach-info")).to_contain_text("surfaces v1 trained", timeout=60_000)
    row = page.locator("#versions tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("candidate")
    page.get_by_role("button", name="Promote version 1").click()
    expect(row).to_contain_text("active")
    page.screenshot(path=str(ARTIFACTS / "teach.png"), full_page=True)
    with Client(base) as client:
        assert [h.status for h in client.heads("surfaces")] == ["active"]
        assert client.label_set("surfaces").counts == expected


def test_inspect_the_anomalous_first_with_the_heat_map_then_see_the_detector(
    page: Page, server: tuple[object, str, str]
) -> None:
    """Review view, anomalous first: the detector's heat map and region over the image, `h`
    hides and shows them, `d` labels the part defective; Teach view: the detector's version,
    measured by that label."""
    from bench.defects import product, shots

    from tests.support import PHOTOS
    from visinspect.client import Client

    _, base, _ = server
    coffee = product(PHOTOS / "coffee.png")
    with Client(base) as client:
        client.create_label_set("line", ["ok", "defect"])
        for shot in shots(coffee, "good", 8, seed=80):
            client.label(client.predict(shot.jpeg).id, "line", "ok")
        detector = client.train_detector("line", "ok")
        client.change_head(detector.id, "promote")
        broken = next(shots(coffee, "missing", 1, seed=81))
        flagged = client.predict(broken.jpeg)
    assert flagged.anomaly is not None
    assert flagged.anomaly.verdict == "anomalous"
    page.goto(base + "/")
    page.get_by_role("tab", name="Review").click()
    page.get_by_label("Label into").select_option("line")
    page.get_by_label("Order").select_option("anomalous")
    page.locator("#queue-filters").get_by_role("button", name="Apply").click()
    expect(page.locator("#review-title")).to_contain_text(f"#{flagged.id}")
    expect(page.locator("#review-anomaly")).to_contain_text("anomalous")
    expect(page.locator("#review-heat")).to_be_visible()
    expect(page.locator("#review-region")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "inspect.png"), full_page=True)
    page.keyboard.press("h")
    expect(page.locator("#review-heat")).to_be_hidden()
    expect(page.locator("#toggle-heat")).to_have_attribute("aria-pressed", "false")
    page.keyboard.press("h")
    expect(page.locator("#review-heat")).to_be_visible()
    page.keyboard.press("d")
    expect(page.locator("#review-status")).to_contain_text(
        f"#{flagged.id} labelled defect in line (defective)"
    )
    page.get_by_role("tab", name="Teach").click()
    page.locator("#teach-set").select_option("line")
    row = page.locator("#detectors tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("active")
    expect(row).to_contain_text("0 of 1 (0.0%)")  # escapes: the defective part was caught


AXE = (
    Path(__file__).resolve().parent.parent
    / ".cache"
    / "npm"
    / "node_modules"
    / "axe-core"
    / "axe.min.js"
)


@pytest.mark.parametrize("width", [1280, 390])  # a desktop and a phone
def test_every_view_has_no_accessibility_violations(
    browser: Browser, server: tuple[object, str, str], photos: Path, width: int
) -> None:
    """axe-core (npm, installed by make test) on each view, with data in it, at two widths."""
    from visinspect.client import Client

    ARTIFACTS.mkdir(exist_ok=True)
    assert AXE.exists(), "axe-core is missing: make test installs it (make axe)"
    _, base, _ = server
    with Client(base) as client:
        reviewed = client.predict(photos / "coffee.png")
        client.predict(photos / "camera.png")
        client.review(reviewed.id, "wrong", true_class_id=968)
    context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    found: dict[str, list[str]] = {}
    try:
        opened = context.new_page()
        opened.goto(base + "/")
        opened.add_script_tag(path=str(AXE))
        # Each view once its data arrived (the line that reports it is filled).
        loaded = {
            "Classify": "#drop",
            "History": "#page-info",
            "Statistics": "#stats-total",
            "Review": "#review-title",
            "Quality": "#quality-total",
            "Drift": "#drift-verdict",
            "Teach": "#teach-info",
        }
        for view, filled in loaded.items():
            opened.get_by_role("tab", name=view).click()
            expect(opened.locator(filled)).not_to_be_empty()
            if width < 600:  # how each view reads on a phone
                opened.screenshot(path=str(ARTIFACTS / f"phone-{view.lower()}.png"), full_page=True)
            found[view] = opened.evaluate(
                "async () => (await axe.run(document)).violations.map("
                "v => `${v.id}: ${v.help} (${v.nodes.map(n => n.target).join(' ')})`)"
            )
    finally:
        context.close()
    assert found == {view: [] for view in found}, json.dumps(found, indent=1)


def test_the_api_docs_render_with_no_inline_script(
    page: Page, server: tuple[object, str, str]
) -> None:
    """/docs under a policy of scripts and styles from this origin only: Swagger UI renders
    the operations, and the fixture fails the test on any CSP violation or script error."""
    _, base, _ = server
    response = page.goto(base + "/docs")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy
    assert "script-src 'self'" in policy
    expect(page.locator(".opblock-summary-path", has_text="/predict").first).to_be_visible(
        timeout=30_000
    )
