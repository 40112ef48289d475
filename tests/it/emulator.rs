//! Driving the JumpCloud emulator as a client would (filled when jcemu lands).
