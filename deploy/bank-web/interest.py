"""The interest job: credits interest to every account, once per period.

    INTEREST_RATE_PERCENT  the rate, in percent (default 1.5)
    INTEREST_PERIOD        what this run pays for (default: this month, YYYY-MM);
                           a period already paid is skipped, so a Job that is
                           restarted after committing pays nothing twice
    INTEREST_CONNECT_DEADLINE  seconds to keep retrying the database (default 300)

plus the web app's settings (DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD,
SEED_ACCOUNTS). All accounts are credited in one transaction. Exit status:
0 done (or already done), 1 the database failed (the Job retries), 2 bad settings.
"""

import os
import sys
import time

import bank


def main(env=None):
    env = os.environ if env is None else env
    try:
        settings = bank.Settings.from_env(env)
        rate = bank.parse_rate(env.get("INTEREST_RATE_PERCENT", "").strip() or "1.5")
        period = env.get("INTEREST_PERIOD", "").strip() or time.strftime("%Y-%m", time.gmtime())
        if not bank.PERIOD.fullmatch(period):
            raise bank.ConfigError(f"INTEREST_PERIOD={period!r} is not 1-32 letters, digits or _.:-")
        raw_deadline = env.get("INTEREST_CONNECT_DEADLINE", "").strip() or "300"
        if not bank.DIGITS.fullmatch(raw_deadline):
            raise bank.ConfigError(f"INTEREST_CONNECT_DEADLINE={raw_deadline!r} is not a number of seconds")
    except bank.ConfigError as error:
        print(f"interest: {error}", file=sys.stderr, flush=True)
        return 2
    driver = bank._driver()
    try:
        conn = bank.connect_with_backoff(settings, deadline=int(raw_deadline))
        try:
            # Seeded here too (idempotently): if the job runs before any web
            # server has, the period must not be paid on an empty bank.
            bank.ensure_schema(conn, settings.seed_accounts)
            result = bank.apply_interest(conn, period, rate)
        finally:
            conn.close()
    except driver.err.MySQLError as error:
        bank.log(f"interest for {period} failed: {error}")
        return 1
    if result is None:
        bank.log(f"interest for {period} was paid already: nothing to do")
        return 0
    for owner, balance, interest in result["credited"]:
        bank.log(
            f"  {owner}: {bank.format_amount(balance)} + {bank.format_amount(interest)} "
            f"= {bank.format_amount(balance + interest)}"
        )
    bank.log(
        f"interest for {period} at {rate}%: {bank.format_amount(result['total_cents'])} "
        f"credited to {result['accounts']} accounts"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
