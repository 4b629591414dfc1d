"""JupyterLab driven through headless Chromium (Selenium + Debian's chromedriver), by what a person
sees and clicks: menus, the kernel picker dialog, cell editors, toolbar buttons."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple, TypeVar

T = TypeVar("T")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--window-size=1400,900"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook tab in front
_MENU_ITEM_JS = """
for (const item of document.querySelectorAll('.lm-Menu .lm-Menu-item')) {
  const label = item.querySelector('.lm-Menu-itemLabel');
  if (label && label.textContent === arguments[0] && item.offsetParent !== null) return item;
}
return null;
"""
_CELL_STATE_JS = """
const cell = document.querySelectorAll(arguments[0] + ' .jp-Notebook .jp-Cell')[arguments[1]];
if (!cell) return null;
const prompt = cell.querySelector('.jp-InputArea-prompt');
const outputs = Array.from(cell.querySelectorAll('.jp-OutputArea-output'), el => el.innerText.trim());
return [prompt ? prompt.textContent.trim() : '', outputs.join('\\n')];
"""


def start_chromium():
    """A headless Chromium under Debian's chromedriver (no Selenium Manager download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class LabPage:
    """One JupyterLab tab in the browser ``driver``."""

    def __init__(self, driver) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.By = By

    # -- waiting ------------------------------------------------------------------------------
    def wait(self, what: str, condition: Callable[[], Optional[T]], timeout: float) -> T:
        """Poll ``condition`` until it returns something truthy; AssertionError naming ``what``."""
        from selenium.common.exceptions import WebDriverException

        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                value = condition()
                if value:
                    return value
                last = value
            except (WebDriverException, IndexError, TypeError) as e:  # not there (yet), replaced under us
                last = e
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
            time.sleep(0.2)

    def find(self, css: str):
        return self.driver.find_elements(self.By.CSS_SELECTOR, css)

    # -- app ----------------------------------------------------------------------------------
    def open(self, base_url: str, token: str, timeout: float = 90, attempts: int = 3) -> None:
        """Load JupyterLab until its theme is applied and the menu bar is there.

        On a loaded machine the browser sometimes fails to fetch the theme's stylesheet
        ("Error Loading Theme" dialog, the page unstyled), and while other test workers add and
        remove their netns hosts' interfaces Chromium may abort the page load with its own error
        page (ERR_NETWORK_CHANGED: it watches the machine's addresses and routes): such a page is
        reloaded, up to ``attempts`` times in all.
        """
        def loaded() -> Optional[str]:
            if self.driver.execute_script("return !!document.getElementById('main-frame-error')"):
                return "browser error page: " + self.driver.execute_script(
                    "return (document.body && document.body.innerText || '').slice(0, 200)")
            if self._dialog_header() == "Error Loading Theme":
                return "theme error"
            themed = self.driver.execute_script("return document.body.dataset.jpThemeName || ''")
            return "ok" if themed and self._menu("File") else None

        for attempt in range(1, attempts + 1):
            self.driver.get(f"{base_url}/lab?token={token}")
            outcome = self.wait("JupyterLab to load", loaded, timeout)
            if outcome == "ok":
                return
            print(f"JupyterLab load {attempt}: {outcome!r}, reloading")  # shown on failure
        raise AssertionError(f"JupyterLab could not load in {attempts} attempts")

    def _dialog_header(self) -> str:
        headers = self.find(".jp-Dialog .jp-Dialog-header")
        return headers[0].text.strip() if headers else ""

    def _menu(self, label: str):
        for item in self.find(".lm-MenuBar-item"):
            if item.text.strip() == label:
                return item
        return None

    def menu(self, *path: str, timeout: float = 30) -> None:
        """Click through the menu bar: ``menu("File", "New", "Notebook")``."""
        self.wait(f"menu {path[0]}", lambda: self._menu(path[0]), timeout).click()
        for label in path[1:]:
            self.wait(f"menu item {label!r}",
                      lambda label=label: self.driver.execute_script(_MENU_ITEM_JS, label), timeout).click()

    def dialog(self, title: str, timeout: float = 60):
        """The dialog headed ``title``, once it is shown (its header is filled in a bit later)."""
        def shown():
            dialogs = self.find(".jp-Dialog")
            if dialogs and self._dialog_header() == title:
                return dialogs[0]
            return None
        try:
            return self.wait(f"the {title!r} dialog", shown, timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}; dialog shown: {self._dialog_header()!r}") from None

    def pick_kernel(self, display_name: str, timeout: float = 60) -> None:
        """In the "Select Kernel" dialog: choose ``display_name`` in its list, press Select."""
        from selenium.webdriver.support.ui import Select

        dialog = self.dialog("Select Kernel", timeout)
        select = Select(dialog.find_element(self.By.CSS_SELECTOR, "select"))
        names = [option.text for option in select.options]
        assert display_name in names, f"{display_name!r} is not in the kernel picker: {names}"
        select.select_by_visible_text(display_name)
        dialog.find_element(self.By.CSS_SELECTOR, ".jp-mod-accept").click()
        self.wait("the dialog to close", lambda: not self.find(".jp-Dialog"), timeout)

    def accept_dialog(self, title: str, timeout: float = 30) -> None:
        self.dialog(title, timeout).find_element(self.By.CSS_SELECTOR, ".jp-mod-accept").click()
        self.wait("the dialog to close", lambda: not self.find(".jp-Dialog"), timeout)

    # -- notebook -----------------------------------------------------------------------------
    def kernel_name(self) -> str:
        """The kernel's display name in the notebook toolbar ("" before there is one)."""
        names = self.find(f"{NOTEBOOK} .jp-KernelName")
        return names[0].text.strip() if names else ""

    def kernel_status(self) -> str:
        """idle / busy / starting / restarting / unknown ..., from the toolbar's indicator, or
        from the status bar ("SSH btest | Idle") when the toolbar has not drawn it (seen once in
        CI: the toolbar stayed empty but for one button)."""
        found = self.find(f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator")
        if found:
            return found[0].get_attribute("data-status")
        for item in self.find("#jp-main-statusbar .jp-StatusBar-TextItem"):
            if " | " in item.text:
                return item.text.rsplit(" | ", 1)[1].strip().lower()
        return "unknown"

    def toolbar(self, command: str) -> None:
        """Click a notebook toolbar button (e.g. ``notebook:interrupt-kernel``)."""
        self.find(f"{NOTEBOOK} jp-button[data-command='{command}']")[0].click()

    def cells(self) -> List:
        return self.find(f"{NOTEBOOK} .jp-Notebook .jp-Cell")

    def run_cell(self, code: str) -> int:
        """Type ``code`` (one line) into the last cell and press Shift+Enter; return its index."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        index = len(self.cells()) - 1
        self.cells()[index].find_element(self.By.CSS_SELECTOR, ".cm-content").click()
        (ActionChains(self.driver).send_keys(code)
         .key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform())
        return index

    def cell_state(self, index: int) -> Optional[Tuple[str, str]]:
        """(prompt, output text) of cell ``index``, in one round trip to the browser; the prompt
        is ``[*]:`` while the cell runs and ``[3]:`` when done."""
        return self.driver.execute_script(_CELL_STATE_JS, NOTEBOOK, index)

    def prompt(self, index: int) -> str:
        return self.cell_state(index)[0]

    def output(self, index: int) -> str:
        return self.cell_state(index)[1]

    def wait_output(self, index: int, timeout: float = 60) -> str:
        """The output of cell ``index`` once it has finished running."""
        def done() -> Optional[str]:
            prompt, output = self.cell_state(index)
            if prompt in ("[*]:", "[ ]:", ""):
                return None
            return output or "(no output)"
        return self.wait(f"cell {index} to finish", done, timeout)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        path.with_suffix(".html").write_text(self.driver.page_source)
