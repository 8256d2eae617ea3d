// Applied-offset stores (exactly-once mode): a sink records the source offsets each write applied
// in the same transaction as its effect; on assignment the runtime resumes past them and skips them.
namespace KFlow

open System
open System.Threading.Tasks

[<NoEquality; NoComparison>]
type AppliedOffsetStore = {
    GroupId: string
    Load: (TopicPartition * int64) list -> Task<Map<TopicPartition, int64[]>>
    Prune: (TopicPartition * int64) list -> Task
}

type FencedWriteException(message: string) =
    inherit Exception(message)

[<RequireQualifiedAccess>]
module AppliedOffsets =

    let resumeAt (committed: int64) (applied: int64[]) =
        let mutable next = committed

        for offset in applied do
            if offset = next then
                next <- next + 1L

        next

    let positionsOf (envelope: Envelope<'a>) =
        envelope.Tokens |> List.map _.Position |> List.distinct

    let rec isFenced (error: exn) =
        match error with
        | null -> false
        | :? FencedWriteException -> true
        | :? AggregateException as e -> e.InnerExceptions |> Seq.exists isFenced
        | e -> isFenced e.InnerException
