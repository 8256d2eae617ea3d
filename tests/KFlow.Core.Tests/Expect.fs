// Domain assertions for the core's tests, in Expecto's message-last style, so a failure names the
// partition, the expected and the actual commit point or error.
[<RequireQualifiedAccess>]
module KFlow.Core.Tests.Expect

open Expecto
open KFlow

/// The ledger's commit point of a partition is `expected`.
let commitPointIs (tp: TopicPartition) (expected: int64) (ledger: Ledger) (message: string) =
    match Ledger.commitPoint tp ledger with
    | ValueSome actual when actual = expected -> ()
    | ValueSome actual -> failtestf "%s: commit point of %O is %d, expected %d." message tp actual expected
    | ValueNone -> failtestf "%s: %O is not assigned, expected commit point %d." message tp expected

/// The value of an Ok result; fails the test with the error otherwise.
let ok (result: Result<'T, LedgerError>) (message: string) : 'T =
    match result with
    | Ok value -> value
    | Error e -> failtestf "%s: expected Ok, got %A." message e

/// The result is the given ledger error.
let ledgerError (expected: LedgerError) (result: Result<'T, LedgerError>) (message: string) =
    match result with
    | Error actual when actual = expected -> ()
    | Error actual -> failtestf "%s: expected %A, got %A." message expected actual
    | Ok _ -> failtestf "%s: expected %A, got Ok." message expected
