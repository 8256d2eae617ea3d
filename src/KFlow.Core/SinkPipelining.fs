// How a runtime may run a sink's writes: one at a time per substream (every ordinary sink), or up to
// N at once for a sink that keeps the order per key itself (e.g. the PostgreSQL upsert writer).
namespace KFlow

open System.Threading.Tasks

[<NoEquality; NoComparison>]
type SinkPipelining = {
    InFlight: int
    Reserve: obj -> Task
    Release: obj -> unit
}

[<RequireQualifiedAccess>]
module SinkPipelining =
    let sequential = {
        InFlight = 1
        Reserve = fun _ -> Task.CompletedTask
        Release = ignore
    }

    let create (inFlight: int) (reserve: obj -> Task) (release: obj -> unit) =
        if inFlight < 1 then
            invalidArgWith
                "inFlight"
                $"A sink's writes in flight per substream must be ≥ 1 (got {inFlight}); 1 runs them one at a time."

        if obj.ReferenceEquals(reserve, null) || obj.ReferenceEquals(release, null) then
            invalidArgWith "reserve" "Give both reserve and release functions (see SinkPipelining)."

        {
            InFlight = inFlight
            Reserve = reserve
            Release = release
        }
