"""Let a Luigi worker send a bearer token to its central scheduler (for luigid behind Portcullis).

Luigi 3.8.1 has no setting for it: luigi.rpc's fetchers (urllib, or `requests` when installed)
send no headers of their own, and the only credential they can send is `Authorization: Basic`
from the scheduler URL's userinfo (`--scheduler-url http://user:password@host/`), which Portcullis
does not accept (it takes bearer JWTs or its own session cookie: a stock worker gets 401).

With LUIGI_SCHEDULER_BEARER set, importing this module (portcullis_tasks.py does) makes every
scheduler RPC of this process carry `Authorization: Bearer <LUIGI_SCHEDULER_BEARER>` (replacing a
Basic one from the URL). Without it nothing changes. Import it before the worker starts, e.g. from
the module named by `--module`.
"""

import os

from luigi import rpc

_token = os.environ.get("LUIGI_SCHEDULER_BEARER", "").strip()

if _token:
    _authorization = f"Bearer {_token}"
    _create_request = rpc.URLLibFetcher._create_request
    _requests_fetch = rpc.RequestsFetcher.fetch

    def _create_request_with_bearer(self, full_url, body=None):
        request = _create_request(self, full_url, body=body)
        request.add_header("Authorization", _authorization)  # replaces a Basic one
        return request

    def _requests_fetch_with_bearer(self, full_url, body, timeout):
        self.check_pid()  # may replace the session (after a fork)
        self.session.headers["Authorization"] = _authorization
        return _requests_fetch(self, full_url, body, timeout)

    rpc.URLLibFetcher._create_request = _create_request_with_bearer
    rpc.RequestsFetcher.fetch = _requests_fetch_with_bearer
