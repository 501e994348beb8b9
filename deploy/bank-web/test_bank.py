"""Table-driven tests of the bank's pure parts; no database needed.

    cd deploy/bank-web && python3 -m unittest -v test_bank
"""

import decimal
import itertools
import unittest

import bank
import server


class Money(unittest.TestCase):
    def test_amounts_parse_to_cents(self):
        for text, cents in [("12.34", 1234), ("12", 1200), ("0.5", 50), (" 7.05 ", 705), (3, 300),
                            ("9999999999999.99", 999999999999999)]:
            with self.subTest(text=text):
                self.assertEqual(bank.parse_amount(text), cents)

    def test_bad_amounts_are_refused(self):
        for text in ["-1", "1.234", "abc", "", None, True, 1.5, "1e3", "10000000000001", "0", "0.00", "١٢"]:
            with self.subTest(text=text), self.assertRaises(bank.InvalidInput):
                bank.parse_amount(text)
        self.assertEqual(bank.parse_amount("0", allow_zero=True), 0)

    def test_amounts_format(self):
        for cents, text in [(0, "0.00"), (5, "0.05"), (1234, "12.34"), (-5, "-0.05"), (100000, "1000.00")]:
            with self.subTest(cents=cents):
                self.assertEqual(bank.format_amount(cents), text)

    def test_interest_rounds_half_to_even(self):
        rate = decimal.Decimal("1.5")
        for balance, interest in [(0, 0), (100000, 1500), (100, 2), (33, 0), (34, 1), (10033, 150)]:
            with self.subTest(balance=balance):
                self.assertEqual(bank.interest_on(balance, rate), interest)
        # 50 * 1% = 0.5 -> 0; 150 * 1% = 1.5 -> 2.
        self.assertEqual(bank.interest_on(50, decimal.Decimal(1)), 0)
        self.assertEqual(bank.interest_on(150, decimal.Decimal(1)), 2)

    def test_rates(self):
        self.assertEqual(bank.parse_rate("1.5"), decimal.Decimal("1.5"))
        for bad in ["-1", "101", "x", "NaN", "inf"]:
            with self.subTest(rate=bad), self.assertRaises(bank.ConfigError):
                bank.parse_rate(bad)


class Names(unittest.TestCase):
    def test_account_references(self):
        self.assertEqual(bank.parse_account_ref("7"), ("id", 7))
        self.assertEqual(bank.parse_account_ref(7), ("id", 7))
        self.assertEqual(bank.parse_account_ref("alice"), ("owner", "alice"))
        for bad in ["", None, "0", "-3", "1alice", "a" * 65, "al'ice", True]:
            with self.subTest(ref=bad), self.assertRaises(bank.InvalidInput):
                bank.parse_account_ref(bad)

    def test_seed_accounts(self):
        self.assertEqual(bank.parse_seed("alice:1000.00, bob:250,,"), [("alice", 100000), ("bob", 25000)])
        self.assertEqual(bank.parse_seed(""), [])
        for bad in ["alice", "alice:-1", ":5", "alice:1.234"]:
            with self.subTest(seed=bad), self.assertRaises(bank.ConfigError):
                bank.parse_seed(bad)


class Settings(unittest.TestCase):
    def test_defaults_and_overrides(self):
        s = bank.Settings.from_env({"DB_PASSWORD": "pw"})
        self.assertEqual((s.db_host, s.db_port, s.db_name, s.db_user, s.port),
                         ("mysql-service", 3306, "bank", "bank", 8080))
        self.assertNotIn("pw", repr(s))
        s = bank.Settings.from_env({"DB_PASSWORD": "pw", "DB_HOST": "127.0.0.1", "DB_PORT": "3307",
                                    "PORT": "9000", "SEED_ACCOUNTS": "alice:1"})
        self.assertEqual((s.db_host, s.db_port, s.port, s.seed_accounts),
                         ("127.0.0.1", 3307, 9000, (("alice", 100),)))

    def test_bad_settings_name_the_variable(self):
        for env, name in [({}, "DB_PASSWORD"), ({"DB_PASSWORD": "p", "DB_PORT": "0"}, "DB_PORT"),
                          ({"DB_PASSWORD": "p", "PORT": "http"}, "PORT"),
                          ({"DB_PASSWORD": "p", "DB_NAME": "bank; drop"}, "DB_NAME")]:
            with self.subTest(env=env):
                with self.assertRaises(bank.ConfigError) as caught:
                    bank.Settings.from_env(env)
                self.assertIn(name, str(caught.exception))

    def test_backoff_doubles_up_to_its_cap(self):
        self.assertEqual(list(itertools.islice(bank.backoff_delays(), 7)), [0.5, 1, 2, 4, 8, 15, 15])


class Pages(unittest.TestCase):
    accounts = [{"id": 1, "owner": "alice", "balance_cents": 100050},
                {"id": 2, "owner": "<bob>", "balance_cents": 5}]

    def test_text_page_lists_balances_and_total(self):
        page = server.render_text(self.accounts)
        self.assertIn(server.HOSTNAME, page)
        self.assertRegex(page, r"1\s+alice\s+1000\.50")
        self.assertRegex(page, r"total\s+1000\.55")

    def test_html_page_escapes_owners(self):
        page = server.render_html(self.accounts)
        self.assertIn("&lt;bob&gt;", page)
        self.assertNotIn("<bob>", page)


if __name__ == "__main__":
    unittest.main()
