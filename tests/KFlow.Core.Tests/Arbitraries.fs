// FsCheck generators shared by the core's properties: ledger commands over several partitions,
// with offset gaps, out-of-order deliveries, forks, and stale, double and unknown completions.
namespace KFlow.Core.Tests

open FsCheck
open FsCheck.FSharp

/// One step applied to a ledger (and to the reference model) by the model-based properties.
/// Partitions are indices into Generators.partitions; a pick is an index (mod count) into the
/// tokens issued so far, so picks reach completed and stale tokens as often as open ones.
type Command =
    /// Assigns a partition at a start offset (re-assigning starts a new epoch).
    | Assign of partition: int * startOffset: int64
    /// Revokes a partition.
    | Revoke of partition: int
    /// Delivers the offset `gap` above the next expected one (a negative gap is out of order).
    | Deliver of partition: int * gap: int64
    /// Delivers `count` offsets in a row, each `stride` above the previous.
    | DeliverRun of partition: int * count: int * stride: int64
    /// Completes one part of an issued token.
    | Complete of pick: int
    /// Forks one part of an issued token into `parts` parts (negative is refused).
    | Fork of pick: int * parts: int
    /// Completes a token that was never issued: an issued token's epoch with its offset shifted by
    /// `shift` (gap offsets, and offsets that alias an open one in a 64-offset block or in the ledger's ring).
    | CompleteShifted of pick: int * shift: int64
    /// Completes a token that was never issued: an offset of a partition under an epoch.
    | CompleteForged of partition: int * offset: int64 * epoch: int

/// Generators of ledger values.
module Generators =
    /// The partitions commands refer to.
    let partitions = [|
        KFlow.TopicPartition.create "a" 0
        KFlow.TopicPartition.create "a" 1
        KFlow.TopicPartition.create "b" 0
    |]

    /// A gap between delivered offsets: mostly none, sometimes small (transaction markers), now and
    /// then large (compaction), across 64-offset blocks and far beyond the ledger's window.
    let gap: Gen<int64> =
        Gen.frequency [
            12, Gen.constant 0L
            4, Gen.choose (1, 3) |> Gen.map int64
            2, Gen.choose (4, 200) |> Gen.map int64
            1, Gen.elements [ 1_000L; 5_000L; 70_000L; 3_000_000L; 10_000_000_000L ]
            1, Gen.choose (-3, -1) |> Gen.map int64
        ]

/// The generators, registered through Config.
type Arbitraries =
    /// A ledger command; lists of them are derived (and shrunk) by FsCheck.
    static member Command() : Arbitrary<Command> =
        let partition = Gen.choose (0, Generators.partitions.Length - 1)
        let pick = Gen.choose (0, 10_000)

        let gen =
            Gen.frequency [
                2,
                Gen.map2
                    (fun p start -> Assign(p, start))
                    partition
                    (Gen.elements [ 0L; 1L; 63L; 64L; 1_000L; 123_456L ])
                1, Gen.map Revoke partition
                10, Gen.map2 (fun p gap -> Deliver(p, gap)) partition Generators.gap
                2,
                Gen.map3
                    (fun p count stride -> DeliverRun(p, count, int64 stride))
                    partition
                    (Gen.choose (1, 300))
                    (Gen.elements [ 1; 1; 2; 7; 65 ])
                12, Gen.map Complete pick
                3, Gen.map2 (fun i parts -> Fork(i, parts)) pick (Gen.choose (-1, 4))
                2,
                Gen.map2
                    (fun i shift -> CompleteShifted(i, shift))
                    pick
                    (Gen.elements [ -64L; -1L; 1L; 64L; 1_024L; 16_384L; 65_536L; 1_048_576L ])
                1,
                Gen.map3
                    (fun p offset epoch -> CompleteForged(p, int64 offset, epoch))
                    partition
                    (Gen.choose (0, 2_000))
                    (Gen.choose (0, 6))
            ]

        Arb.fromGen gen
