"""pytest plugin of smtpproto: fixtures that run a real SMTP server for tests."""
