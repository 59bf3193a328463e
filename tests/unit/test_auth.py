"""voicebot.auth: who a credential is, for counting sessions per API key."""

from __future__ import annotations

from voicebot.auth import Authenticator, key_fingerprint


def test_a_token_belongs_to_the_key_that_minted_it_and_no_key_is_kept() -> None:
    auth = Authenticator(("alpha-secret", "beta-secret"))
    alpha = key_fingerprint("alpha-secret")
    assert alpha != key_fingerprint("beta-secret") and "alpha" not in alpha
    token, _ = auth.tokens.mint(60, owner=alpha)
    assert auth.owner("alpha-secret") == alpha
    assert auth.owner(token) == alpha
    assert auth.owner("beta-secret") == key_fingerprint("beta-secret")
    anonymous, _ = auth.tokens.mint(60)
    assert auth.owner(anonymous) is None and auth.owner("ek_unknown") is None
    record = auth.tokens._tokens[token]
    assert "alpha-secret" not in repr(record)
