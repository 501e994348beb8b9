"""The bank: settings, money, the schema and the transactions on it.

Shared by the web server (server.py) and the interest job (interest.py).

    environment ──► Settings.from_env() ──► connect_with_backoff() ──► ensure_schema()
                                                   │
    server.py / interest.py ──► Pool.connection() ─┴──► list_accounts, open_account,
                                                        transfer, apply_interest
                                                        (each one SQL transaction)

Money is kept as whole cents (BIGINT) so no arithmetic is ever rounded
behind anyone's back; it is parsed from and printed as "12.34".
The functions at the top (parse_amount, format_amount, interest_on, ...)
are pure and tested by test_bank.py without a database.
"""

import contextlib
import dataclasses
import decimal
import os
import queue
import re
import sys
import time

# Imported lazily by the functions that talk to the database, so the pure
# parts (and their tests) run where pymysql is not installed.
pymysql = None

# The largest amount accepted, in cents: far below BIGINT's limit, so sums
# of a few of them never overflow.
MAX_CENTS = 10**15
DIGITS = re.compile(r"[0-9]+")
OWNER = re.compile(r"^[A-Za-z][A-Za-z0-9_.@ -]{0,63}$")
PERIOD = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")

# MariaDB error codes the transactions react to.
ER_DUP_ENTRY = 1062
ER_NO_SUCH_TABLE = 1146
ER_LOCK_WAIT_TIMEOUT = 1205
ER_LOCK_DEADLOCK = 1213


class BankError(Exception):
    """A request the bank refuses; `status` is the HTTP status it maps to."""

    status = 400


class InvalidInput(BankError):
    status = 400


class NotFound(BankError):
    status = 404


class Conflict(BankError):
    """An account that exists already, or a transfer that would overdraw."""

    status = 409


class ConfigError(Exception):
    """A setting in the environment that cannot be used."""


# ---------------------------------------------------------------- money (pure)


def parse_amount(text, allow_zero=False):
    """Cents from "12.34", "12", 12 or "0.5"; InvalidInput for anything else.

    At most two decimals, never negative, at most MAX_CENTS.
    """
    if isinstance(text, bool) or text is None:
        raise InvalidInput("an amount is required, like 12.34")
    if isinstance(text, float):
        raise InvalidInput("amounts are written as strings like \"12.34\", not floats")
    raw = str(text).strip()
    if not re.fullmatch(r"[0-9]{1,13}(\.[0-9]{1,2})?", raw):
        raise InvalidInput(f"{raw!r} is not an amount like 12.34 (at most two decimals, not negative)")
    cents = int(decimal.Decimal(raw) * 100)
    if cents > MAX_CENTS:
        raise InvalidInput(f"{raw} is more than the bank handles")
    if cents == 0 and not allow_zero:
        raise InvalidInput("the amount must be more than 0.00")
    return cents


def format_amount(cents):
    """ "12.34" from 1234 (and "-0.05" from -5)."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def parse_owner(text):
    """An account owner's name: a letter, then letters, digits, space, _.@-."""
    owner = str(text or "").strip()
    if not OWNER.fullmatch(owner):
        raise InvalidInput(
            f"{owner!r} is not an owner name (a letter, then up to 63 letters, digits, spaces or _.@-)"
        )
    return owner


def parse_account_ref(value):
    """An account named by id (digits) or owner name: ("id", 7) or ("owner", "alice")."""
    if isinstance(value, bool):
        raise InvalidInput("an account is an id or an owner's name, not true or false")
    if isinstance(value, int) and value > 0:
        return ("id", value)
    text = str(value or "").strip()
    if DIGITS.fullmatch(text) and int(text) > 0:
        return ("id", int(text))
    return ("owner", parse_owner(text))


def parse_rate(text):
    """An interest rate in percent ("1.5") as a Decimal in [0, 100]."""
    try:
        rate = decimal.Decimal(str(text).strip())
    except decimal.InvalidOperation:
        raise ConfigError(f"INTEREST_RATE_PERCENT={text!r} is not a number") from None
    if not rate.is_finite() or rate < 0 or rate > 100:
        raise ConfigError(f"INTEREST_RATE_PERCENT={text!r} is not between 0 and 100")
    return rate


def interest_on(balance_cents, rate_percent):
    """The interest, in whole cents, on a balance: rounded half to even."""
    exact = decimal.Decimal(balance_cents) * rate_percent / 100
    return int(exact.quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_EVEN))


def parse_seed(text):
    """[("alice", 100000), ...] from "alice:1000.00,bob:250"; ConfigError if malformed."""
    accounts = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        owner, sep, amount = item.rpartition(":")
        if not sep:
            raise ConfigError(f"SEED_ACCOUNTS entry {item!r} is not OWNER:AMOUNT")
        try:
            accounts.append((parse_owner(owner), parse_amount(amount, allow_zero=True)))
        except InvalidInput as error:
            raise ConfigError(f"SEED_ACCOUNTS entry {item!r}: {error}") from None
    return accounts


def backoff_delays(first=0.5, factor=2.0, cap=15.0):
    """0.5, 1, 2, 4, 8, 15, 15, ... seconds: how long to wait between attempts."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * factor)


# ------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the app reads from its environment."""

    db_host: str = "mysql-service"
    db_port: int = 3306
    db_name: str = "bank"
    db_user: str = "bank"
    db_password: str = dataclasses.field(default="", repr=False)
    port: int = 8080
    seed_accounts: tuple = ()
    connect_timeout: int = 3

    @classmethod
    def from_env(cls, env=None):
        """Settings from `env` (os.environ by default); ConfigError names the bad variable."""
        env = os.environ if env is None else env

        def number(name, default, low, high):
            raw = env.get(name, "").strip() or str(default)
            if not DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
                raise ConfigError(f"{name}={raw!r} is not a whole number from {low} to {high}")
            return int(raw)

        password = env.get("DB_PASSWORD", "")
        if not password:
            raise ConfigError("DB_PASSWORD is empty: set it (from the Secret) to the database user's password")
        name = env.get("DB_NAME", "").strip() or cls.db_name
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
            raise ConfigError(f"DB_NAME={name!r} is not a plain database name")
        return cls(
            db_host=env.get("DB_HOST", "").strip() or cls.db_host,
            db_port=number("DB_PORT", cls.db_port, 1, 65535),
            db_name=name,
            db_user=env.get("DB_USER", "").strip() or cls.db_user,
            db_password=password,
            port=number("PORT", cls.port, 1, 65535),
            seed_accounts=tuple(parse_seed(env.get("SEED_ACCOUNTS", ""))),
            connect_timeout=number("DB_CONNECT_TIMEOUT", cls.connect_timeout, 1, 60),
        )


def log(message):
    """One line to stdout, as everything here logs."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} {message}", file=sys.stdout, flush=True)


# ------------------------------------------------------------------- database


def _driver():
    global pymysql
    if pymysql is None:
        import pymysql as driver

        pymysql = driver
    return pymysql


def error_code(error):
    """The MariaDB error number of a pymysql error, or None."""
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def connect(settings):
    """A new connection (autocommit off, utf8mb4); pymysql's errors if it cannot."""
    driver = _driver()
    return driver.connect(
        host=settings.db_host,
        port=settings.db_port,
        user=settings.db_user,
        password=settings.db_password,
        database=settings.db_name,
        charset="utf8mb4",
        autocommit=False,
        connect_timeout=settings.connect_timeout,
        read_timeout=30,
        write_timeout=30,
    )


def connect_with_backoff(settings, deadline=None, stop=None, sleep=time.sleep, clock=time.monotonic):
    """Connects, waiting 0.5 s, 1 s, 2 s ... (at most 15 s) between attempts.

    Gives up (re-raising the last error) once `deadline` seconds have passed,
    never if it is None; returns None early if `stop()` becomes true.
    """
    driver = _driver()
    started = clock()
    for attempt, delay in enumerate(backoff_delays(), start=1):
        if stop is not None and stop():
            return None
        try:
            return connect(settings)
        except driver.err.MySQLError as error:
            if deadline is not None and clock() - started + delay > deadline:
                raise
            log(
                f"database {settings.db_host}:{settings.db_port}/{settings.db_name} not reachable "
                f"(attempt {attempt}: {error}); retrying in {delay:g}s"
            )
            sleep(delay)
    return None


SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        owner VARCHAR(64) NOT NULL,
        balance_cents BIGINT NOT NULL DEFAULT 0,
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        UNIQUE KEY accounts_owner (owner),
        CONSTRAINT accounts_never_overdrawn CHECK (balance_cents >= 0)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS transfers (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        from_account BIGINT NOT NULL,
        to_account BIGINT NOT NULL,
        amount_cents BIGINT NOT NULL,
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        CONSTRAINT transfers_from FOREIGN KEY (from_account) REFERENCES accounts (id),
        CONSTRAINT transfers_to FOREIGN KEY (to_account) REFERENCES accounts (id),
        CONSTRAINT transfers_positive CHECK (amount_cents > 0)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS interest_runs (
        period VARCHAR(32) NOT NULL PRIMARY KEY,
        rate_percent VARCHAR(16) NOT NULL,
        accounts INT NOT NULL,
        total_cents BIGINT NOT NULL,
        applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
)


def ensure_schema(conn, seed=()):
    """Creates the tables if missing and opens the `seed` accounts that do not exist yet.

    Safe to run from several replicas at once: CREATE TABLE IF NOT EXISTS
    and INSERT IGNORE on the unique owner.
    """
    with conn.cursor() as cursor:
        for statement in SCHEMA:
            cursor.execute(statement)
        for owner, cents in seed:
            cursor.execute(
                "INSERT IGNORE INTO accounts (owner, balance_cents) VALUES (%s, %s)", (owner, cents)
            )
    conn.commit()


def _retrying(conn, work, attempts=3):
    """Runs work(cursor) in one transaction, again on a deadlock or lock timeout."""
    driver = _driver()
    for attempt in range(1, attempts + 1):
        try:
            conn.begin()
            with conn.cursor() as cursor:
                result = work(cursor)
            conn.commit()
            return result
        except driver.err.OperationalError as error:
            conn.rollback()
            if error_code(error) in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT) and attempt < attempts:
                continue
            raise
        except BaseException:
            conn.rollback()
            raise
    raise AssertionError("unreachable")


def list_accounts(conn):
    """[{"id", "owner", "balance_cents"}] by id."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT id, owner, balance_cents FROM accounts ORDER BY id")
        rows = cursor.fetchall()
    conn.commit()
    return [{"id": r[0], "owner": r[1], "balance_cents": r[2]} for r in rows]


def open_account(conn, owner, balance_cents):
    """Opens an account; Conflict if the owner has one already."""
    driver = _driver()

    def work(cursor):
        cursor.execute(
            "INSERT INTO accounts (owner, balance_cents) VALUES (%s, %s)", (owner, balance_cents)
        )
        return cursor.lastrowid

    try:
        account_id = _retrying(conn, work)
    except driver.err.IntegrityError as error:
        if error_code(error) == ER_DUP_ENTRY:
            raise Conflict(f"{owner} has an account already") from None
        raise
    return {"id": account_id, "owner": owner, "balance_cents": balance_cents}


def _resolve(cursor, ref):
    kind, value = ref
    column = "id" if kind == "id" else "owner"
    cursor.execute(f"SELECT id FROM accounts WHERE {column} = %s", (value,))
    row = cursor.fetchone()
    if row is None:
        raise NotFound(f"no account {value}")
    return row[0]


def transfer(conn, source_ref, target_ref, amount_cents):
    """Moves money in one transaction; Conflict (nothing changed) if it would overdraw.

    Both rows are locked in id order, so two opposite transfers cannot
    deadlock each other; returns both accounts after the transfer.
    """

    def work(cursor):
        source = _resolve(cursor, source_ref)
        target = _resolve(cursor, target_ref)
        if source == target:
            raise InvalidInput("an account cannot transfer to itself")
        cursor.execute(
            "SELECT id, owner, balance_cents FROM accounts WHERE id IN (%s, %s) ORDER BY id FOR UPDATE",
            (source, target),
        )
        rows = {r[0]: {"id": r[0], "owner": r[1], "balance_cents": r[2]} for r in cursor.fetchall()}
        if source not in rows or target not in rows:
            raise NotFound("an account disappeared during the transfer")
        payer, payee = rows[source], rows[target]
        if payer["balance_cents"] < amount_cents:
            raise Conflict(
                f"insufficient funds: {payer['owner']} has {format_amount(payer['balance_cents'])}, "
                f"a transfer of {format_amount(amount_cents)} is refused"
            )
        cursor.execute(
            "UPDATE accounts SET balance_cents = balance_cents - %s WHERE id = %s", (amount_cents, source)
        )
        cursor.execute(
            "UPDATE accounts SET balance_cents = balance_cents + %s WHERE id = %s", (amount_cents, target)
        )
        cursor.execute(
            "INSERT INTO transfers (from_account, to_account, amount_cents) VALUES (%s, %s, %s)",
            (source, target, amount_cents),
        )
        transfer_id = cursor.lastrowid
        payer["balance_cents"] -= amount_cents
        payee["balance_cents"] += amount_cents
        return {"id": transfer_id, "amount_cents": amount_cents, "from": payer, "to": payee}

    return _retrying(conn, work)


def apply_interest(conn, period, rate_percent):
    """Credits interest to every account for `period`, once, in one transaction.

    The period is recorded in the same transaction, so a job that is run
    again (or restarted after committing) changes nothing: it returns None.
    Otherwise {"accounts": n, "total_cents": t, "credited": [(owner, old, interest)]}.
    """
    driver = _driver()

    def work(cursor):
        try:
            cursor.execute(
                "INSERT INTO interest_runs (period, rate_percent, accounts, total_cents) VALUES (%s, %s, 0, 0)",
                (period, str(rate_percent)),
            )
        except driver.err.IntegrityError as error:
            if error_code(error) == ER_DUP_ENTRY:
                return None
            raise
        cursor.execute("SELECT id, owner, balance_cents FROM accounts ORDER BY id FOR UPDATE")
        credited = []
        total = 0
        for account_id, owner, balance in cursor.fetchall():
            interest = interest_on(balance, rate_percent)
            if interest > 0:
                cursor.execute(
                    "UPDATE accounts SET balance_cents = balance_cents + %s WHERE id = %s",
                    (interest, account_id),
                )
            credited.append((owner, balance, interest))
            total += interest
        cursor.execute(
            "UPDATE interest_runs SET accounts = %s, total_cents = %s WHERE period = %s",
            (len(credited), total, period),
        )
        return {"accounts": len(credited), "total_cents": total, "credited": credited}

    return _retrying(conn, work)


class Pool:
    """A few idle connections kept for reuse; a connection that saw any error is closed."""

    def __init__(self, settings, idle=4):
        self.settings = settings
        self.idle = queue.LifoQueue(maxsize=idle)

    @contextlib.contextmanager
    def connection(self):
        try:
            conn = self.idle.get_nowait()
        except queue.Empty:
            conn = connect(self.settings)
        try:
            yield conn
        except BankError:
            # A refusal was rolled back cleanly: the connection is fine.
            self._release(conn)
            raise
        except BaseException:
            # Any other error may have left it mid-transaction or broken.
            _close(conn)
            raise
        self._release(conn)

    def _release(self, conn):
        try:
            self.idle.put_nowait(conn)
        except queue.Full:
            _close(conn)

    def close(self):
        while True:
            try:
                _close(self.idle.get_nowait())
            except queue.Empty:
                return


def _close(conn):
    with contextlib.suppress(Exception):
        conn.close()
