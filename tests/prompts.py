"""Instructions the end-to-end tests give the embedded LLM."""

#: Barge-in tests interrupt an answer while it plays, so it must be long whatever the recording
#: says: the pocketsphinx recordings are statements, which a 1.5B model otherwise tends to
#: repeat back in one sentence.
LONG_ANSWERS = ("You are a voice assistant who loves to talk. Whatever the user says, reply with at least "
                "six full sentences about it: what it means, an example, and a story. No lists, no markdown, "
                "never repeat the user's words.")
