#!/usr/bin/env python3
"""Signs in N times through Portcullis at `portcullis demo idp` (as alice) and prints each new
session's cookie, `name=value`, one a line: the cookies benches/load-sessions.sh sends with wrk.

    signin.py PROXY_URL COUNT > cookies.txt

Each sign-in is the browser's code flow without a browser: a page request gets the redirect to
the provider and the sign-in cookie; the provider's form is posted for alice; the callback goes
back to the proxy with the sign-in cookie and sets the session cookie. Python's standard library
only; no redirect is followed by itself.
"""

import http.client
import sys
import urllib.parse


def request(url, method="GET", headers=None, body=None):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    target = parts.path + ("?" + parts.query if parts.query else "")
    conn.request(method, target, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def cookie(response, name):
    for header, value in response.getheaders():
        if header.lower() == "set-cookie" and value.startswith(name + "="):
            return value.split(";", 1)[0]
    raise SystemExit(f"no {name} cookie in {response.status} {response.getheaders()}")


def sign_in(proxy):
    first = request(proxy + "/", headers={"Accept": "text/html"})
    if first.status != 302:
        raise SystemExit(f"the page answered {first.status}, not a redirect to the provider")
    login = cookie(first, "__Host-portcullis_login")
    authorize = first.getheader("Location")
    query = urllib.parse.urlsplit(authorize).query
    form = urllib.parse.parse_qsl(query) + [("login", "alice")]
    picked = request(
        authorize.split("?", 1)[0],
        "POST",
        {"Content-Type": "application/x-www-form-urlencoded"},
        urllib.parse.urlencode(form),
    )
    if picked.status not in (302, 303):
        raise SystemExit(f"the provider answered {picked.status} to the sign-in form")
    callback = urllib.parse.urlsplit(picked.getheader("Location"))
    back = request(
        f"{proxy}{callback.path}?{callback.query}",
        headers={"Accept": "text/html", "Cookie": login},
    )
    if back.status != 302:
        raise SystemExit(f"the callback answered {back.status}")
    return cookie(back, "__Host-portcullis_session")


def main():
    proxy, count = sys.argv[1].rstrip("/"), int(sys.argv[2])
    for _ in range(count):
        print(sign_in(proxy))


if __name__ == "__main__":
    main()
