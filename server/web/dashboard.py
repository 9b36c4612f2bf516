"""The dashboard's shared parts, handed to every page through `request.app.state`."""

from __future__ import annotations

import threading

from starlette.requests import Request

from protocol.policy import Policy
from server.live import LiveFeed
from server.policy_rollout import PolicyTrial
from server.site import Site
from server.storage import Store
from server.web.accounts import AccountStore
from server.web.pages import Pages
from server.web.password_checks import PasswordChecks


class Dashboard:
    """What the pages need: the site (its changes), its store (pages read through
    `store.read()`, server/storage/dashboard.py), accounts, the live feed, templates, and the
    policy try-out when the command line injected one (None: unavailable)."""

    def __init__(
        self, site: Site, feed: LiveFeed, *, owns_site: bool, trial: PolicyTrial | None = None
    ) -> None:
        self.site = site
        web = site.config.web
        self.accounts = AccountStore(
            site.store,
            checks=PasswordChecks(web.password_checks_at_once),
            require_totp_for_admins=web.require_totp_for_admins,
            site=site.site,
        )
        self.store: Store = site.store
        self.feed = feed
        self.pages = Pages(site.config.tz, site.site)
        self.trial = trial
        self.trial_lock = threading.Lock()  # one try-out at a time: each replays many events
        self.stopping = threading.Event()  # live streams end when the server shuts down
        self._owns_site = owns_site

    @property
    def policy(self) -> Policy:
        """The published policy (what gates enforce): figures count days as the gates do."""
        return self.site.published_policy().policy

    def close(self) -> None:
        self.stopping.set()
        if self._owns_site:
            self.site.close()


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard
