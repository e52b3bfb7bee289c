"""pytest wiring only: options, markers, the session object, hooks that delegate."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_udpsend.errors import UdpsendError
from pytest_udpsend.frontend import collect, interleave, markers, pcap, reference, reporting, verdicts
from pytest_udpsend.frontend.configure import configure_baseline, configure_lane, session_options
from pytest_udpsend.frontend.keys import SESSION_KEY
from pytest_udpsend.frontend.options import INI_OPTIONS, PYTEST_OPTIONS, add_options
from pytest_udpsend.frontend.session import UdpsendSession, interrupt_on_sigterm


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("udpsend", "UDP send-path regression tests (pytest-udpsend)")
    add_options(group.addoption, PYTEST_OPTIONS)
    for name, help_text, default in INI_OPTIONS:
        parser.addini(name, help_text, default=default)


def pytest_configure(config: pytest.Config) -> None:
    for line in reference.registered_help():  # parameters from the validators, as the docs reference
        config.addinivalue_line("markers", line)
    session = UdpsendSession(session_options(config))
    configure_baseline(session, config)
    session.lane = configure_lane(config)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(collect.Collector(session), "udpsend-collector")
    # Nothing host-wide here: the session starts (reaping, SIGTERM handler) in the first test using it.


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    lane = session.config.stash[SESSION_KEY].lane
    if lane is None or session.config.option.collectonly:
        return None
    interrupt_on_sigterm()  # a cancelled CI job (SIGTERM) must still stop the guest and clean up
    lane.nic_models = markers.nic_links(session.items)  # the guest boots with a NIC pair of each model asked for
    try:
        lane.run(session)
    except UdpsendError as exc:  # e.g. an unsafe state directory: one sentence, not an INTERNALERROR
        raise pytest.UsageError(str(exc)) from None
    return True


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash[SESSION_KEY]
    return reporting.header(session) if session.invited else []


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    session = config.stash[SESSION_KEY]
    return reporting.header(session) if not session.invited and reporting.uses_udpsend(items) else []


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    markers.validate_collected(report)
    return report


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    interleave.plan(items, config)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    return interleave.protocol(item, nextitem)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    result = yield  # the test body raised: that failure stands, bounds are not checked
    verdicts.check_item(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    reporting.shorten_own_errors(report, call)
    pcap.keep_or_discard(item, report)
    collect.attach(item, report)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    udpsend = config.stash[SESSION_KEY]
    if udpsend.tests and config.get_verbosity() >= -1:  # -qq silences it
        terminalreporter.section("udpsend: what each test measured")
        for line in reporting.measured_table(udpsend.tests, config.get_terminal_writer().fullwidth):
            terminalreporter.write_line(line)
        if lines := reporting.interleave_summary(udpsend.tests):
            terminalreporter.section("udpsend: interleaved baseline and candidate")
            for line in lines:
                terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    udpsend = session.config.stash[SESSION_KEY]
    if udpsend.invited or udpsend.tests:  # the document names the backend: bcc is imported only if wanted
        collect.finish(udpsend, hasattr(session.config, "workerinput"))
