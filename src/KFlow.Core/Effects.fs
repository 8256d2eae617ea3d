// What the interpreter of a pipe hands its caller: sink writes and async calls to run, ledger effects,
// outputs and failures (docs in Effects.fsi).
namespace KFlow

open System
open System.Threading.Tasks

[<NoEquality; NoComparison>]
type SinkRequest = {
    Sink: string
    Envelope: Envelope<obj>
    Write: obj -> Task
    Substream: string
    Pipelining: SinkPipelining
}

[<NoEquality; NoComparison>]
type AsyncRequest = {
    Id: int
    Stage: string
    Envelope: Envelope<obj>
    Run: obj -> Task<obj>
}

[<NoEquality; NoComparison>]
type StageFailure = {
    Stage: string
    Position: Position voption
    Tokens: Token list
    Error: exn
}

[<RequireQualifiedAccess>]
module StageFailure =
    let positions (failure: StageFailure) =
        failure.Tokens |> List.map (fun t -> t.Position) |> List.distinct

[<NoEquality; NoComparison>]
type Effects = {
    Outputs: Envelope<obj> list
    Ledger: LedgerEffect list
    Sinks: SinkRequest list
    Calls: AsyncRequest list
    Failures: StageFailure list
}

type AsyncMode =
    | RunInline
    | Defer
