"""The bank's web server: accounts and balances over HTTP.

    GET  /            accounts and balances (HTML for browsers, text otherwise), and this pod's hostname
    GET  /accounts    the same as JSON
    POST /accounts    owner=NAME [balance=12.34]           201, or 409 if the owner has an account
    POST /transfer    from=ACCOUNT to=ACCOUNT amount=12.34 200, or 409 (nothing moved) if it would overdraw
    GET  /healthz     liveness: the process answers
    GET  /ready       readiness: the database answers and the schema is there
    GET  /burn?ms=N   spends N ms (at most 2000) of CPU, for the autoscaling demo

POST bodies are JSON or form-encoded; ACCOUNT is an id or an owner's name.
The server listens at once; a background thread connects to the database
with backoff and creates the schema, and until then everything that needs
the database answers 503. One log line per request goes to stdout.
"""

import html
import json
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bank

MAX_BODY = 64 * 1024
HOSTNAME = socket.gethostname()


class State:
    """What the handlers share: settings, the pool, whether the schema is in place."""

    def __init__(self, settings):
        self.settings = settings
        self.pool = bank.Pool(settings)
        self.schema_ready = threading.Event()
        self.stopping = threading.Event()

    def prepare_database(self):
        """Connects with backoff and creates the schema; run on a thread of its own."""
        conn = bank.connect_with_backoff(self.settings, stop=self.stopping.is_set)
        if conn is None:
            return
        try:
            bank.ensure_schema(conn, self.settings.seed_accounts)
        except Exception as error:  # logged; /ready keeps retrying it
            bank.log(f"creating the schema failed: {error}")
            conn.close()
            return
        conn.close()
        self.schema_ready.set()
        bank.log(f"database {self.settings.db_host}:{self.settings.db_port}/{self.settings.db_name} ready")

    def check_ready(self):
        """None if the database answers and has the schema, else why not."""
        try:
            with self.pool.connection() as conn:
                with conn.cursor() as cursor:
                    try:
                        cursor.execute("SELECT 1 FROM accounts LIMIT 1")
                    except bank.pymysql.err.ProgrammingError as error:
                        if bank.error_code(error) != bank.ER_NO_SUCH_TABLE:
                            raise
                        # The database was recreated empty: put the schema back.
                        bank.ensure_schema(conn, self.settings.seed_accounts)
                    cursor.fetchall()
                conn.commit()
        except Exception as error:
            return f"database not available: {error}"
        self.schema_ready.set()
        return None


def money(account):
    return {**account, "balance": bank.format_amount(account["balance_cents"])}


def render_text(accounts):
    lines = [f"Keelson bank, served by {HOSTNAME}", ""]
    width = max([len(a["owner"]) for a in accounts] + [5])
    lines.append(f"{'ID':>4}  {'OWNER':<{width}}  {'BALANCE':>14}")
    for a in accounts:
        lines.append(f"{a['id']:>4}  {a['owner']:<{width}}  {bank.format_amount(a['balance_cents']):>14}")
    total = sum(a["balance_cents"] for a in accounts)
    lines.append(f"{'':>4}  {'total':<{width}}  {bank.format_amount(total):>14}")
    return "\n".join(lines) + "\n"


def render_html(accounts):
    rows = "".join(
        f"<tr><td>{a['id']}</td><td>{html.escape(a['owner'])}</td>"
        f"<td class=n>{bank.format_amount(a['balance_cents'])}</td></tr>"
        for a in accounts
    )
    total = bank.format_amount(sum(a["balance_cents"] for a in accounts))
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Keelson bank</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 10px}.n{text-align:right}</style></head>"
        f"<body><h1>Keelson bank</h1><p>Served by <b>{html.escape(HOSTNAME)}</b></p>"
        "<table><tr><th>ID</th><th>Owner</th><th class=n>Balance</th></tr>"
        f"{rows}<tr><td></td><th>Total</th><th class=n>{total}</th></tr></table></body></html>\n"
    )


def burn(milliseconds):
    """Spins the CPU for `milliseconds` of process time; the iterations done."""
    end = time.process_time() + milliseconds / 1000
    spins = 0
    while time.process_time() < end:
        for _ in range(1000):
            spins += 1
    return spins


class Handler(BaseHTTPRequestHandler):
    server_version = "keelson-bank/1.0"
    protocol_version = "HTTP/1.1"
    state = None  # set by main()

    # ---------------------------------------------------------------- plumbing

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        """http.server's own messages (bad requests) as our log lines."""
        bank.log(f"{HOSTNAME} {self.client_address[0]} {format % args}")

    def log_request(self, code="-", size="-"):
        """One line per request, written when the response is sent."""
        elapsed = (time.monotonic() - getattr(self, "_started", time.monotonic())) * 1000
        code = getattr(code, "value", code)
        bank.log(
            f'{HOSTNAME} {self.client_address[0]} "{self.command} {self.path}" {code} {size} {elapsed:.1f}ms'
        )

    def send(self, status, body, content_type="text/plain; charset=utf-8"):
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response_only(status)
        self.log_request(status, len(data))
        self.send_header("Server", self.version_string())
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status, value):
        self.send(status, json.dumps(value, indent=1) + "\n", "application/json")

    def send_error_json(self, status, message):
        self.send_json(status, {"error": message, "served_by": HOSTNAME})

    def read_body(self):
        """The request body as a dict, from JSON or a form; InvalidInput if neither."""
        length = self.headers.get("Content-Length", "0")
        if not bank.DIGITS.fullmatch(length) or int(length) > MAX_BODY:
            raise bank.InvalidInput(f"a body of at most {MAX_BODY} bytes with a Content-Length is required")
        raw = self.rfile.read(int(length)).decode("utf-8", errors="replace")
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind == "application/json" or raw.lstrip().startswith("{"):
            try:
                body = json.loads(raw or "{}")
            except json.JSONDecodeError as error:
                raise bank.InvalidInput(f"the body is not valid JSON: {error}") from None
            if not isinstance(body, dict):
                raise bank.InvalidInput("the JSON body must be an object")
            return body
        return {k: v[-1] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}

    def dispatch(self, routes):
        self._started = time.monotonic()
        url = urllib.parse.urlsplit(self.path)
        route = routes.get(url.path.rstrip("/") or "/")
        if route is None:
            self.send_error_json(404, f"no {self.command} {url.path} here")
            return
        try:
            route(self, urllib.parse.parse_qs(url.query))
        except bank.BankError as error:
            self.send_error_json(error.status, str(error))
        except bank.pymysql.err.MySQLError as error:
            self.send_error_json(503, f"database error: {error}")
        except (ConnectionError, TimeoutError) as error:
            self.send_error_json(503, f"database unreachable: {error}")
        except Exception as error:  # a bug: answer and log it rather than drop the connection
            bank.log(f"{HOSTNAME} internal error on {self.command} {self.path}: {error!r}")
            self.send_error_json(500, "internal error")

    def needs_database(self):
        if not self.state.schema_ready.is_set():
            raise DatabaseNotReady()

    def do_GET(self):
        self.dispatch(GET_ROUTES)

    def do_HEAD(self):
        self.dispatch(GET_ROUTES)

    def do_POST(self):
        self.dispatch(POST_ROUTES)

    # ------------------------------------------------------------------ routes

    def index(self, query):
        self.needs_database()
        with self.state.pool.connection() as conn:
            accounts = bank.list_accounts(conn)
        wants_html = "text/html" in self.headers.get("Accept", "") and query.get("format") != ["text"]
        if wants_html:
            self.send(200, render_html(accounts), "text/html; charset=utf-8")
        else:
            self.send(200, render_text(accounts))

    def accounts(self, query):
        self.needs_database()
        with self.state.pool.connection() as conn:
            accounts = bank.list_accounts(conn)
        self.send_json(200, {"served_by": HOSTNAME, "accounts": [money(a) for a in accounts]})

    def open_account(self, query):
        body = self.read_body()
        owner = bank.parse_owner(body.get("owner"))
        balance = bank.parse_amount(body.get("balance", "0"), allow_zero=True)
        self.needs_database()
        with self.state.pool.connection() as conn:
            account = bank.open_account(conn, owner, balance)
        self.send_json(201, {"served_by": HOSTNAME, "account": money(account)})

    def transfer(self, query):
        body = self.read_body()
        source = bank.parse_account_ref(body.get("from"))
        target = bank.parse_account_ref(body.get("to"))
        amount = bank.parse_amount(body.get("amount"))
        self.needs_database()
        with self.state.pool.connection() as conn:
            done = bank.transfer(conn, source, target, amount)
        self.send_json(
            200,
            {
                "served_by": HOSTNAME,
                "transfer": done["id"],
                "amount": bank.format_amount(done["amount_cents"]),
                "from": money(done["from"]),
                "to": money(done["to"]),
            },
        )

    def healthz(self, query):
        self.send(200, "ok\n")

    def ready(self, query):
        problem = self.state.check_ready()
        if problem:
            self.send(503, f"not ready: {problem}\n")
        else:
            self.send(200, "ready\n")

    def burn(self, query):
        try:
            ms = int(query.get("ms", ["100"])[0])
        except ValueError:
            raise bank.InvalidInput("ms must be a whole number of milliseconds") from None
        ms = max(0, min(ms, 2000))
        spins = burn(ms)
        self.send(200, f"burned {ms}ms of CPU ({spins} spins) on {HOSTNAME}\n")


class DatabaseNotReady(bank.BankError):
    status = 503

    def __init__(self):
        super().__init__("the database is not ready yet (connecting with backoff); try again shortly")


GET_ROUTES = {
    "/": Handler.index,
    "/accounts": Handler.accounts,
    "/healthz": Handler.healthz,
    "/ready": Handler.ready,
    "/burn": Handler.burn,
}
POST_ROUTES = {
    "/accounts": Handler.open_account,
    "/transfer": Handler.transfer,
}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    try:
        settings = bank.Settings.from_env()
    except bank.ConfigError as error:
        print(f"bank-web: {error}", file=sys.stderr, flush=True)
        return 2
    bank._driver()
    state = State(settings)
    Handler.state = state
    server = Server(("0.0.0.0", settings.port), Handler)
    bank.log(
        f"{HOSTNAME} listening on :{settings.port}; database {settings.db_user}@"
        f"{settings.db_host}:{settings.db_port}/{settings.db_name}"
    )

    def stop(signum, frame):
        bank.log(f"{HOSTNAME} got signal {signum}: shutting down")
        state.stopping.set()
        # shutdown() waits for serve_forever to return: not from this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=state.prepare_database, name="prepare-database", daemon=True).start()
    server.serve_forever()
    server.server_close()
    state.pool.close()
    bank.log(f"{HOSTNAME} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
