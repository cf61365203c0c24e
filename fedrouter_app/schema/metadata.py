"""What a settings field's metadata may say beyond its help text."""

# A setting added after sweeps had recorded fingerprints declares, under this key, the value that keeps the old
# behaviour: at that value the setting is left out of the fingerprint, so a sweep resumed after the upgrade skips its
# completed jobs (and a checkpoint resumes) instead of running them again. Any other value counts as usual.
NEUTRAL = "fingerprint_neutral"
