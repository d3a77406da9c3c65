"""Deterministic test keys: everything derives from a seed through SHAKE-256.

These keys are for tests only. Each RSA prime is the first probable prime
(Miller-Rabin, three bases) at or after a SHAKE-256 starting point; every
signature made with the key is checked by OpenSSL, which a composite factor
would fail. RSA-PSS signatures take their salt from the seed and the message,
so the same seed always gives byte-identical certificates.
"""

from __future__ import annotations

import functools
import hashlib
import math
from itertools import compress

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

_DOMAIN = b"BlindBox TEST platform v1 - NOT AMD\x00"
DEFAULT_SEED = b"BlindBox software SEV-SNP platform"
#: A memo of the prime searches for DEFAULT_SEED's RSA-4096 keys: how many odd
#: steps past its starting point each search ends. The search costs seconds per
#: prime in pure Python (and every new process, e.g. a CLI test, pays again); a
#: memo entry costs one primality check. It changes speed only: an entry is used
#: only when the number it points to passes the same checks as the search, and
#: tests re-run the search for some entries to show they are its results.
_SEARCH_MEMO: dict[str, int] = {
    "rsa/ark/Milan/4096/p": 452, "rsa/ark/Milan/4096/q": 239,
    "rsa/ask/Milan/4096/p": 126, "rsa/ask/Milan/4096/q": 159,
    "rsa/asvk/Milan/4096/p": 889, "rsa/asvk/Milan/4096/q": 153,
    "rsa/ark/Genoa/4096/p": 917, "rsa/ark/Genoa/4096/q": 423,
    "rsa/ask/Genoa/4096/p": 355, "rsa/ask/Genoa/4096/q": 2573,
    "rsa/asvk/Genoa/4096/p": 1980, "rsa/asvk/Genoa/4096/q": 351,
    "rsa/ark/Turin/4096/p": 305, "rsa/ark/Turin/4096/q": 1658,
    "rsa/ask/Turin/4096/p": 1009, "rsa/ask/Turin/4096/q": 765,
    "rsa/asvk/Turin/4096/p": 311, "rsa/asvk/Turin/4096/q": 141,
}
_E = 65537
_SIEVE_LIMIT = 1 << 18
_WINDOW = 4096
#: Miller-Rabin bases after base 2. Candidates are random, not adversarial: one
#: round already errs with probability below 2**-64 at 2048 bits (Damgard,
#: Landrock and Pomerance), and OpenSSL checks every signature the key makes.
_MR_BASES = (3, 5)
_P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    "581a0db248b0a77aecec196accc52973",
    16,
)
_SHA384_LEN = 48


def derive(seed: bytes, label: str, length: int) -> bytes:
    """``length`` bytes determined by ``seed`` and ``label`` alone (domain-separated)."""
    data = _DOMAIN + len(seed).to_bytes(4, "big") + seed + label.encode()
    return hashlib.shake_256(data).digest(length)


@functools.lru_cache(maxsize=1)
def _small_primes() -> tuple[int, ...]:
    sieve = bytearray([1]) * (_SIEVE_LIMIT + 1)
    sieve[0] = sieve[1] = 0
    for i in range(2, math.isqrt(_SIEVE_LIMIT) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, _SIEVE_LIMIT + 1, i)))
    return tuple(p for p in compress(range(_SIEVE_LIMIT + 1), sieve) if p > 2)


def _miller_rabin(n: int, base: int) -> bool:
    d, s = n - 1, 0
    while not d & 1:
        d >>= 1
        s += 1
    x = pow(base, d, n)
    if x in (1, n - 1):
        return True
    for _ in range(s - 1):
        x = x * x % n
        if x == n - 1:
            return True
    return False


def _acceptable(n: int) -> bool:
    return n % _E != 1 and _miller_rabin(n, 2) and all(_miller_rabin(n, b) for b in _MR_BASES)


def _prime_from(start: int, bits: int) -> int:
    """The first probable prime p >= start with p mod e != 1, found by a windowed sieve."""
    candidate = start | 1
    primes = _small_primes()
    while True:
        sieve = bytearray([1]) * _WINDOW
        for p in primes:
            first = ((p - candidate % p) * ((p + 1) >> 1)) % p
            if first < _WINDOW:
                sieve[first::p] = bytes((_WINDOW - 1 - first) // p + 1)
        for i in compress(range(_WINDOW), sieve):
            n = candidate + 2 * i
            if _acceptable(n):
                if n.bit_length() != bits:
                    raise ArithmeticError("prime search ran past the requested size")
                return n
        candidate += 2 * _WINDOW


def _prime(seed: bytes, label: str, bits: int, *, memo: bool = True) -> int:
    raw = int.from_bytes(derive(seed, label, bits // 8), "big")
    # Top two bits set so that the product of two such primes has exactly 2*bits bits.
    start = raw | (3 << (bits - 2)) | 1
    steps = _SEARCH_MEMO.get(label) if memo and seed == DEFAULT_SEED else None
    if steps is not None:
        n = start + 2 * steps
        if n.bit_length() == bits and _acceptable(n):
            return n
    return _prime_from(start, bits)


@functools.lru_cache(maxsize=64)
def rsa_key(seed: bytes, label: str, bits: int = 4096, *, memo: bool = True) -> rsa.RSAPrivateKey:
    """A deterministic RSA key (e = 65537) for ``seed`` and ``label``.

    Pure Python: a new RSA-4096 key takes seconds, so results are cached.
    ``memo=False`` ignores the search memo (for tests of the memo).
    """
    if bits % 16 or bits < 1024:
        raise ValueError(f"RSA size must be a multiple of 16 and at least 1024, got {bits}")
    p = _prime(seed, f"rsa/{label}/{bits}/p", bits // 2, memo=memo)
    q = _prime(seed, f"rsa/{label}/{bits}/q", bits // 2, memo=memo)
    if p == q:
        raise ArithmeticError("derived identical RSA primes")
    p, q = max(p, q), min(p, q)
    d = pow(_E, -1, math.lcm(p - 1, q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(_E, p * q),
    )
    # OpenSSL's key check would redo the primality tests (a third of a second per
    # key); every signature is verified instead, which a bad key cannot pass.
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


@functools.lru_cache(maxsize=1024)
def ec_key(seed: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A deterministic P-384 key for ``seed`` and ``label``."""
    scalar = int.from_bytes(derive(seed, f"p384/{label}", 64), "big") % (_P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


def _mgf1_sha384(mgf_seed: bytes, length: int) -> bytes:
    out = b"".join(
        hashlib.sha384(mgf_seed + counter.to_bytes(4, "big")).digest()
        for counter in range(-(-length // _SHA384_LEN))
    )
    return out[:length]


def pss_sign_sha384(key: rsa.RSAPrivateKey, message: bytes, seed: bytes) -> bytes:
    """RSASSA-PSS (SHA-384, MGF1-SHA-384, 48-byte salt) with a salt derived from seed and message.

    RFC 8017 EMSA-PSS-ENCODE followed by the RSA private operation; the result
    is checked with OpenSSL before it is returned.
    """
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    em_bits = n.bit_length() - 1
    em_len = -(-em_bits // 8)
    m_hash = hashlib.sha384(message).digest()
    salt = derive(seed, "pss-salt/" + m_hash.hex(), _SHA384_LEN)
    h = hashlib.sha384(bytes(8) + m_hash + salt).digest()
    db = bytes(em_len - 2 * _SHA384_LEN - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1_sha384(h, len(db)), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    em = int.from_bytes(bytes(masked) + h + b"\xbc", "big")
    # RSA with the CRT.
    s1 = pow(em, numbers.dmp1, numbers.p)
    s2 = pow(em, numbers.dmq1, numbers.q)
    s = s2 + numbers.q * (numbers.iqmp * (s1 - s2) % numbers.p)
    signature = s.to_bytes((n.bit_length() + 7) // 8, "big")
    key.public_key().verify(
        signature,
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=_SHA384_LEN),
        hashes.SHA384(),
    )
    return signature
