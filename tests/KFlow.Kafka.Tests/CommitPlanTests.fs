// Tests for src/KFlow.Kafka/CommitPlan.fs: what offset may be stored, from the ledger's commit
// point, the last routed offset and the consumer's position.
module KFlow.Kafka.Tests.CommitPlanTests

open Expecto
open KFlow.Kafka

let private some (v: int64) = ValueSome v

let tests =
    testList "CommitPlan" [
        test "the ledger's commit point is stored when it moved forward" {
            Expect.equal (CommitPlan.toStore (some 5L) (some 9L) (some 10L) (some 3L)) (some 5L) "5 beyond 3"
            Expect.equal (CommitPlan.toStore (some 5L) (some 9L) (some 10L) ValueNone) (some 5L) "first store"
        }

        test "nothing is stored that is not beyond the offset stored last" {
            Expect.equal (CommitPlan.toStore (some 5L) (some 9L) (some 10L) (some 5L)) ValueNone "same offset"
            Expect.equal (CommitPlan.toStore (some 4L) (some 9L) (some 10L) (some 5L)) ValueNone "backwards"
        }

        test "the position passes a gap only when everything routed is finished" {
            // Offsets 0..9 routed and finished; the client skipped 10..11 (aborted, markers): position 12.
            Expect.equal
                (CommitPlan.toStore (some 10L) (some 9L) (some 12L) (some 10L))
                (some 12L)
                "gap skipped"
            // Offset 7 still open: the position must not be used.
            Expect.equal
                (CommitPlan.toStore (some 7L) (some 9L) (some 12L) (some 5L))
                (some 7L)
                "open offset holds"
        }

        test "with nothing routed yet, the position is stored when valid" {
            Expect.equal
                (CommitPlan.toStore ValueNone ValueNone (some 4L) ValueNone)
                (some 4L)
                "skipped records"

            Expect.equal
                (CommitPlan.toStore ValueNone ValueNone ValueNone ValueNone)
                ValueNone
                "no position yet"
        }

        test "a commit point is never stored past one that is still open, whatever the position" {
            for position in [ 0L; 3L; 8L; 100L ] do
                let stored = CommitPlan.toStore (some 3L) (some 8L) (some position) ValueNone
                Expect.equal stored (some 3L) $"position {position}"
        }
    ]
